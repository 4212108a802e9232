"""Object ids: integers below 2**53, so they survive JSON and JavaScript unchanged.

Each process counts up from a random start (drawn again in a forked child). Two processes
collide only if their ranges overlap, which is as unlikely as a collision of random ids, and
the ids one worker makes follow each other: the event log's object index then grows at one
end instead of at random places, which makes its inserts about twice as cheap.
Ids are names, not secrets: an object is guarded by its worker's privacy checks, not by
an id nobody could guess.

>>> from bastion.ids import new_id
>>> first, second = new_id(), new_id()
>>> 0 < first < 2**53 and 0 < second < 2**53 and first != second
True
"""

from __future__ import annotations

import itertools
import os
import random

MAX_ID = 2**53


def _restart() -> None:
    global _counter
    _counter = itertools.count(random.SystemRandom().randrange(1, MAX_ID))


_restart()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart)


def new_id() -> int:
    """A fresh object id (collisions are checked by the worker that stores it)."""
    return next(_counter) % MAX_ID or 1
