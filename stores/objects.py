"""The live object store of a worker: id -> object, as the event log says it stands now.

>>> import torch
>>> from bastion.stores.objects import ObjectStore
>>> store = ObjectStore("M1")
>>> store.put(7, torch.tensor([1, 2]))
>>> 7 in store, len(store)
(True, 1)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bastion.errors import ObjectExistsError, ObjectNotFoundError


class ObjectStore:
    """Objects held by one worker, keyed by integer id (``objects`` is PySyft's ``_objects``)."""

    __slots__ = ("worker_id", "objects", "digests", "details")

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.objects: dict[int, Any] = {}
        #: digest of each object's current content, when known (saves rehashing on get/move)
        self.digests: dict[int, str] = {}
        #: the ``create`` detail (canonical JSON) of objects that have one
        self.details: dict[int, str] = {}

    def put(self, obj_id: int, obj: Any, *, replace: bool = False) -> None:
        """Store ``obj`` under ``obj_id``; taking an id already in use needs ``replace``."""
        if not replace and obj_id in self.objects:
            raise ObjectExistsError(
                f"object id {obj_id} is already in use on worker {self.worker_id}; "
                "nothing was stored. Send it again to get a fresh id."
            )
        self.objects[obj_id] = obj
        self.digests.pop(obj_id, None)
        self.details.pop(obj_id, None)

    def get(self, obj_id: int) -> Any:
        """The object under ``obj_id``, or ``ObjectNotFoundError``."""
        try:
            return self.objects[obj_id]
        except KeyError:
            raise self.not_found(obj_id) from None

    def pop(self, obj_id: int) -> Any:
        """Remove and return the object under ``obj_id``, or ``ObjectNotFoundError``."""
        try:
            obj = self.objects.pop(obj_id)
        except KeyError:
            raise self.not_found(obj_id) from None
        self.digests.pop(obj_id, None)
        self.details.pop(obj_id, None)
        return obj

    def discard(self, obj_id: int) -> bool:
        """Remove ``obj_id`` if present; True when something was removed."""
        self.digests.pop(obj_id, None)
        self.details.pop(obj_id, None)
        return self.objects.pop(obj_id, None) is not None

    def clear(self) -> list[int]:
        """Drop everything; returns the ids that were dropped."""
        ids = list(self.objects)
        self.objects.clear()
        self.digests.clear()
        self.details.clear()
        return ids

    def not_found(self, obj_id: int) -> ObjectNotFoundError:
        """The error for a missing id, saying what may have happened."""
        return ObjectNotFoundError(
            f"worker {self.worker_id} holds no object {obj_id}: it was fetched with .get(), "
            "moved, deleted or cleared. Send the data again to get a new pointer."
        )

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self.objects

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self) -> Iterator[int]:
        return iter(self.objects)
