"""Building large tables and their indexes: allocation only, with no reference cycles."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

FREEZE_AFTER = 50_000


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while building a table or an index of it.

    Building only allocates, and what it allocates has no reference cycles, yet every few hundred
    allocations the collector walks the young objects and, as the table grows, the whole heap again:
    on 100,000 rules that was 40% of the parse. Reference counting still frees everything; the
    collector is resumed (if it was running) when the building is done.

    What a large build made (over FREEZE_AFTER objects) is then frozen (`gc.freeze`): it lives as long
    as the table, and without that the collector's next passes would walk all of it again, twice.
    """
    running = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if running:
            if gc.get_count()[0] > FREEZE_AFTER:
                gc.freeze()
            gc.enable()
