"""The exit codes podnat documents (README: "Exit codes"). One place, so scripts can rely on them."""

from enum import IntEnum


class ExitCode(IntEnum):
    """What a podnat command's exit status means."""

    OK = 0  # every path as expected
    DRIFT = 1  # a path is broken or drifted from what Istio meant
    USAGE = 2  # bad flags or arguments
    CLUSTER = 3  # the cluster could not be reached or read (access, timeout, pod state)
    BAD_INPUT = 4  # an input file or table could not be read
    INTERNAL = 5  # a bug in podnat: rerun with --debug and report it
