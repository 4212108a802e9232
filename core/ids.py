"""Object ids: random integers below 2**53, so they survive JSON and JavaScript unchanged.

>>> from bastion.ids import new_id
>>> 0 < new_id() < 2**53
True
"""

from __future__ import annotations

import random

_random = random.Random()
MAX_ID = 2**53


def new_id() -> int:
    """A fresh random object id (collisions are checked by the worker that stores it)."""
    return _random.getrandbits(53) or 1
