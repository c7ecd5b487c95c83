"""`python -m podnat`."""

from podnat.cli import main

main()
