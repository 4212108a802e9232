"""The worker side of privacy: which objects are private, what is derived from them, and
what may leave.

A :class:`PrivacyGuard` belongs to one :class:`~bastion.Worker`, whose handlers ask it before
anything leaves (``get``, ``move``) and tell it what each operation read and wrote:

- a **private** object (registered by its owner) leaves only to its owner;
- an object computed from private ones is **private-derived** (its *sources* are the private
  objects it comes from): the result of an op or of shipped code with a tainted input, an
  argument an op wrote into (in place, ``out=``, running statistics), every tensor sharing
  storage with one, and every tensor holding a gradient after a tainted ``backward``;
- a private-derived object leaves to a peer that owns all its sources, or as the release
  policy says: ``Deny``, ``Allow`` (a ``release`` event) or ``DP`` (clipped, noised, accounted:
  a ``release`` event; past the budget a ``denied`` one).

Everything the guard knows is in the event log: ``create`` events carry
``{"private": true, "owner": ..., "tags": [...], "policy": ...}`` or
``{"derived": true, "sources": [...]}``, ``policy`` events the worker's policy and budget,
``release`` events each DP release, so :meth:`PrivacyGuard.restore` rebuilds it after a
restart. Workers that hold nothing private pay one dict check per operation.

>>> import torch, bastion as sy
>>> from bastion.messages import Get, Ref, RunOp
>>> worker = sy.Worker("doc-guard")
>>> x = worker.register(torch.tensor([1.0, 2.0]), private=True)
>>> y = worker.handle(RunOp("Tensor.__add__", (Ref(x), 0), {}), peer="bob").value
>>> worker.privacy.labels[y.id] == {x}
True
>>> worker.handle(Get(y.id), peer="bob").error.message.endswith("the release policy is deny")
True
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bastion.errors import ConfigurationError
from bastion.events import payload_digest
from bastion.logs import get_logger
from bastion.privacy import (
    DP,
    Accountant,
    Allow,
    Budget,
    BudgetReport,
    Deny,
    ReleasePolicy,
    as_policy,
    gaussian_release,
    policy_from_json,
)

if TYPE_CHECKING:
    from bastion.worker import Worker

log = get_logger("bastion.privacy")

#: In-place dunders: they write into their first argument.
_INPLACE_DUNDERS = frozenset(
    f"__i{name}__" for name in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "div",
                                "mod", "pow", "lshift", "rshift", "and", "or", "xor")
) | {"__setitem__", "__set__"}  # fmt: skip
#: Functions that update arguments they do not return (running statistics, noise buffers).
_WRITES_ARGUMENTS = ("batch_norm", "instance_norm", "rrelu")


def writes_arguments(op: str, kwargs: dict[str, Any]) -> bool:
    """True when ``op`` may write into its tensor arguments (beyond any result it returns).

    >>> writes_arguments("Tensor.add_", {}), writes_arguments("torch.add", {})
    (True, False)
    """
    if kwargs and (kwargs.get("out") is not None or kwargs.get("inplace")):
        return True
    base = op.rsplit(".", 1)[-1].split("#", 1)[0]
    if base.endswith("_") and not base.endswith("__"):
        return True
    return base in _INPLACE_DUNDERS or any(part in op for part in _WRITES_ARGUMENTS)


def _is_backward(op: str) -> bool:
    return op.split("#", 1)[0].endswith("backward")


@dataclass(frozen=True, slots=True)
class Source:
    """A private object as its owner registered it."""

    owner: str | None
    tags: tuple[str, ...]
    policy: ReleasePolicy | None

    def to_json(self) -> dict[str, Any]:
        return {"private": True, "owner": self.owner, "tags": list(self.tags),
                "policy": None if self.policy is None else self.policy.to_json()}  # fmt: skip


def _storage_key(value: Any) -> int:
    try:
        return value.untyped_storage().data_ptr() if value.numel() else 0
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return 0


class PrivacyGuard:
    """One worker's privacy state and decisions (``worker.privacy``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        #: every object ever registered private, by id (derived labels name them)
        self.sources: dict[int, Source] = {}
        #: live objects that are private or private-derived -> the private ids they come from
        self.labels: dict[int, frozenset[int]] = {}
        #: live objects that are private themselves (registered, not derived)
        self.originals: set[int] = set()
        self.default: ReleasePolicy = Deny()
        self.budget: Budget | None = None
        self.accountants: dict[str, Accountant] = {}
        self.total = Accountant()

    # ------------------------------------------------------------------ configuration

    def register(self, obj_id: int, owner: str | None, tags: Iterable[str],
                 policy: ReleasePolicy | str | None) -> dict[str, Any]:  # fmt: skip
        """Mark ``obj_id`` private; returns the ``create`` event's detail."""
        tags = tuple(tags)
        if not all(isinstance(tag, str) and tag for tag in tags):
            raise ConfigurationError(f"tags are non-empty strings, got {tags!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ConfigurationError(f"owner is a peer id (a non-empty string), got {owner!r}")
        source = Source(owner, tags, as_policy(policy))
        self.sources[obj_id] = source
        self.labels[obj_id] = frozenset((obj_id,))
        self.originals.add(obj_id)
        return source.to_json()

    def set_policy(self, policy: ReleasePolicy | str, budget: Budget | None) -> dict[str, Any]:
        """Set the default release policy and the per-peer budget; returns the event detail."""
        resolved = as_policy(policy)
        if resolved is None:
            raise ConfigurationError("set_release_policy() needs a policy: 'deny', 'allow' or DP")
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigurationError(f"budget is a Budget(epsilon, delta), not {budget!r}")
        self.default, self.budget = resolved, budget
        return {"default": resolved.to_json(),
                "budget": None if budget is None else budget.to_json()}  # fmt: skip

    # ------------------------------------------------------------------ taint

    def taint(self, ids: Iterable[int]) -> frozenset[int] | None:
        """The private sources of objects ``ids`` together (None when none is tainted)."""
        labels = self.labels
        taint = None
        for obj_id in ids:
            sources = labels.get(obj_id)
            if sources is not None:
                taint = sources if taint is None else taint | sources
        return taint

    def call_taint(self, ids: Iterable[int], peer: str) -> frozenset[int] | None:
        """Shipped code runs in the worker's process and may reach any object: its results
        derive from every private object this worker was given, unless ``peer`` owns them all.
        """
        taint = self.taint(ids)
        if self.sources and not self.owns(peer, self.sources):
            everything = frozenset(self.sources)
            taint = everything if taint is None else taint | everything
        return taint

    def label(self, obj_id: int, taint: frozenset[int]) -> dict[str, Any]:
        """Mark a result derived from ``taint``; returns its ``create`` event's detail."""
        if obj_id in self.originals:  # written in place: still the owner's private object
            return self.sources[obj_id].to_json()
        current = self.labels.get(obj_id)
        if current is not None and not taint <= current:
            taint = current | taint
        elif current is not None:
            taint = current
        self.labels[obj_id] = taint
        return {"derived": True, "sources": sorted(taint)}

    def snapshot(self, inputs: dict[int, int]) -> dict[int, int]:
        """Version counters of the tensor inputs, to see afterwards which were written."""
        objects, versions = self.worker.store.objects, {}
        for obj_id in inputs.values():
            value = objects.get(obj_id)
            if isinstance(value, torch.Tensor) and not value.is_inference():
                versions[obj_id] = value._version
        return versions

    def written(
        self, op: str, kwargs: dict[str, Any], inputs: dict[int, int], versions: dict[int, int],
        *, everything: bool = False,
    ) -> set[int]:
        """The stored objects a tainted operation may have written, besides its results."""
        objects = self.worker.store.objects
        if everything or writes_arguments(op, kwargs):
            written = {i for i in inputs.values() if isinstance(objects.get(i), torch.Tensor)}
        else:
            written = {i for i, v in versions.items() if objects[i]._version != v}
        if _is_backward(op):
            written |= {i for i, value in objects.items() if isinstance(value, torch.Tensor)
                        and (value.is_leaf or value.retains_grad) and value.grad is not None}
        if written:  # views and other tensors sharing their memory were written too
            keys = {_storage_key(objects[i]) for i in written} - {0}
            if keys:
                written |= {i for i, value in objects.items() if isinstance(value, torch.Tensor)
                            and _storage_key(value) in keys}  # fmt: skip
        return written

    def forget(self, ids: Iterable[int]) -> None:
        """Objects that left the worker (fetched, moved, deleted, cleared)."""
        for obj_id in ids:
            if self.labels.pop(obj_id, None) is not None:
                self.originals.discard(obj_id)

    # ------------------------------------------------------------------ decisions

    def owns(self, peer: str, sources: Iterable[int]) -> bool:
        """True when ``peer`` registered every one of ``sources``."""
        return all((owner := self.sources[s].owner) is not None and owner == peer
                   for s in sources)  # fmt: skip

    def policy_for(self, sources: frozenset[int]) -> tuple[ReleasePolicy, str]:
        """The strictest of the sources' policies (a source without one has the default),
        and why a refusal under it is one."""
        policies = {self.sources[s].policy or self.default for s in sources}
        if any(isinstance(p, Deny) for p in policies):
            return Deny(), "the release policy is deny"
        dp = {p for p in policies if isinstance(p, DP)}
        if len(dp) > 1:
            return Deny(), "its sources have different dp policies; give them one policy"
        return (dp.pop(), "") if dp else (Allow(), "")

    def refuse(self, obj_id: int, peer: str, request: str, why: str) -> Exception:
        return self.worker.record_denied(peer, request, why, object_id=obj_id)

    def check_move(self, obj_id: int, peer: str, destination: str) -> None:
        """Refuse (``denied``) or allow (``release`` for derived data) a move of ``obj_id``."""
        sources = self.labels.get(obj_id)
        if sources is None or self.owns(peer, sources):
            return
        if obj_id in self.originals:
            raise self.refuse(obj_id, peer, "move", "the object is private: only its owner "
                              "may move it; compute on it where it is") from None
        policy, why = self.policy_for(sources)
        if isinstance(policy, Allow):
            self._record_release(obj_id, peer, "move", sources, {"mechanism": "allow",
                                                                  "destination": destination})
            return
        if isinstance(policy, DP):
            why = ("the release policy is dp: it leaves only through get(), with noise; a move "
                   "would carry the exact value")
        raise self.refuse(obj_id, peer, "move", f"the object is computed from private data "
                          f"and {why}") from None

    def check_get(
        self, obj_id: int, value: Any, peer: str, with_grad: bool
    ) -> tuple[Any, Any, str] | None:
        """Refuse, allow, or release with noise a ``get`` of ``obj_id``.

        Returns None when the value leaves as it is, else ``(value, grad, digest)`` to send.
        """
        sources = self.labels.get(obj_id)
        if sources is None or self.owns(peer, sources):
            return None
        if obj_id in self.originals:
            raise self.refuse(obj_id, peer, "get", "the object is private: only its owner may "
                              "fetch it; compute on it and ask for a release of the result")
        grad = value.grad if with_grad and isinstance(value, torch.Tensor) and value.is_leaf \
            else None  # fmt: skip
        released = self.release(sources, (value, grad), peer, "get", obj_id)
        if released is None:
            return None
        (value, grad), digest = released
        return value, grad, digest

    def release(self, sources: frozenset[int], value: Any, peer: str, request: str,
                obj_id: int | None = None) -> tuple[Any, str] | None:  # fmt: skip
        """Let ``value``, derived from ``sources``, leave to ``peer`` as the policy says.

        Returns None when it leaves as it is (``allow``: a ``release`` event), ``(noised
        value, digest)`` under ``dp`` (tensors and numbers in tuples, lists and dicts are
        clipped together and noised), or raises ``PermissionDenied`` (a ``denied`` event).
        """
        if self.owns(peer, sources):
            return None
        policy, why = self.policy_for(sources)
        if isinstance(policy, Allow):
            self._record_release(obj_id, peer, request, sources, {"mechanism": "allow"})
            return None
        if isinstance(policy, Deny):
            raise self.refuse(obj_id, peer, request, f"the object is computed from private "
                              f"data and {why}")
        return self._dp_release(obj_id, value, peer, request, sources, policy)

    def _dp_release(self, obj_id: int | None, value: Any, peer: str, request: str,
                    sources: frozenset[int], policy: DP) -> tuple[Any, str]:  # fmt: skip
        leaves: list[torch.Tensor] = []
        try:
            template = _flatten(value, leaves)
        except TypeError as exc:
            raise self.refuse(obj_id, peer, request, f"a dp release is of real tensors and "
                              f"numbers (in tuples, lists or dicts), not {exc}") from None
        budget = self.budget
        if budget is None:
            raise self.refuse(obj_id, peer, request, "the release policy is dp but the worker "
                              "sets no privacy budget (set_release_policy(..., budget=Budget()))")
        z = policy.noise_multiplier
        accountant = self.accountants.setdefault(peer, Accountant())
        spent = accountant.epsilon(budget.delta)
        after = accountant.epsilon_after(noise_multiplier=z, delta=budget.delta)
        if after > budget.epsilon:
            raise self.refuse(obj_id, peer, request, f"privacy budget spent: this release would "
                              f"bring epsilon to {after:.4g}, past the budget {budget.epsilon:g} "
                              f"(spent {spent:.4g}, delta {budget.delta:g})")
        if budget.total_epsilon is not None:
            total = self.total.epsilon_after(noise_multiplier=z, delta=budget.delta)
            if total > budget.total_epsilon:
                raise self.refuse(obj_id, peer, request, f"the worker's total privacy budget "
                                  f"is spent: this release would bring it to {total:.4g}, past "
                                  f"{budget.total_epsilon:g}")
        noised = gaussian_release(leaves, policy.clip, z)
        released = _rebuild(template, noised)
        accountant.step(noise_multiplier=z)
        self.total.step(noise_multiplier=z)
        digest = (payload_digest(noised[0]) if len(noised) == 1 else
                  payload_digest(tuple(payload_digest(t) for t in noised)))  # fmt: skip
        self._record_release(obj_id, peer, request, sources, {
            "mechanism": "gaussian", "accountant": accountant.mechanism, "noise_multiplier": z,
            "sigma": policy.sigma, "sensitivity": policy.clip, "sample_rate": 1.0,
            "epsilon_spent": after - spent, "epsilon_total": after,
            "epsilon_budget": budget.epsilon, "delta": budget.delta,
        }, digest=digest)
        return released, digest

    def _record_release(self, obj_id: int | None, peer: str, request: str, sources: frozenset[int],
                        detail: dict[str, Any], digest: str | None = None) -> None:  # fmt: skip
        self.worker.log.append("release", object_id=obj_id, peer=peer, digest=digest,
                               detail={"request": request, "sources": sorted(sources), **detail})
        log.info("private-derived data released", worker=self.worker.id, peer=peer,
                 object_id=obj_id, mechanism=detail["mechanism"])

    def filter_delete(self, ids: Iterable[int], peer: str, request: str) -> list[int]:
        """The ids ``peer`` may delete: not another owner's private objects (``denied``)."""
        allowed, kept = [], []
        for obj_id in ids:
            if obj_id in self.originals and not self.owns(peer, self.labels[obj_id]):
                kept.append(obj_id)
            else:
                allowed.append(obj_id)
        if kept:
            self.worker.record_denied(peer, request, "private objects are deleted only by their "
                                      "owner; they were kept", ids=kept)
        return allowed

    def budget_report(self, peer: str) -> BudgetReport:
        """What ``peer`` has spent and has left."""
        accountant = self.accountants.get(peer) or Accountant()
        budget = self.budget
        spent = accountant.epsilon(budget.delta) if budget is not None else 0.0
        left = None if budget is None else max(budget.epsilon - spent, 0.0)
        return BudgetReport(peer, None if budget is None else budget.epsilon,
                            None if budget is None else budget.delta, spent, left,
                            sum(steps for _, _, steps in accountant.history),
                            accountant.mechanism)  # fmt: skip

    # ------------------------------------------------------------------ restart

    def restore(self) -> None:
        """Rebuild after a restart: flags from the recovered objects' details, sources from
        their registration events, the policy and the spent budgets from the log."""
        log, details = self.worker.log, self.worker.store.details
        policies = log.events(kind="policy")
        if policies:
            self.default = policy_from_json(policies[-1].detail["default"]) or Deny()
            budget = policies[-1].detail.get("budget")
            self.budget = None if budget is None else Budget(**budget)
        for event in log.events(kind="release"):
            if event.detail.get("mechanism") == "gaussian":
                step = {"noise_multiplier": event.detail["noise_multiplier"],
                        "sample_rate": event.detail.get("sample_rate", 1.0)}  # fmt: skip
                self.accountants.setdefault(event.peer, Accountant()).step(**step)
                self.total.step(**step)
        for obj_id, text in details.items():
            detail = json.loads(text)
            if detail.get("private"):
                self.sources[obj_id] = _source(detail)
                self.labels[obj_id] = frozenset((obj_id,))
                self.originals.add(obj_id)
            elif detail.get("derived"):
                self.labels[obj_id] = frozenset(detail["sources"])
        named = set().union(*self.labels.values()) if self.labels else set()
        for source_id in named - self.sources.keys():  # registered, since fetched or deleted
            registered = [e for e in log.events(kind="create", object_id=source_id)
                          if e.detail.get("private")]  # fmt: skip
            # A source whose registration is not in the log is kept private to no one.
            self.sources[source_id] = (_source(registered[-1].detail) if registered
                                       else Source(None, (), Deny()))  # fmt: skip


class _Number:
    """Where a Python number stood in a released value."""

    def __init__(self, index: int) -> None:
        self.index = index


def _flatten(value: Any, leaves: list[torch.Tensor]) -> Any:
    """``value`` with each tensor or number replaced by its index in ``leaves``."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.layout != torch.strided:
            raise TypeError(f"a {value.dtype} {value.layout} tensor")
        leaves.append(value)
        return len(leaves) - 1
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        leaves.append(torch.tensor(float(value), dtype=torch.float64))
        return _Number(len(leaves) - 1)
    if value is None:
        return None
    if type(value) in (tuple, list):
        return type(value)(_flatten(item, leaves) for item in value)
    if type(value) is dict:
        return {key: _flatten(item, leaves) for key, item in value.items()}
    raise TypeError(f"a {type(value).__name__}")


def _rebuild(template: Any, leaves: list[torch.Tensor]) -> Any:
    if type(template) is int:
        return leaves[template]
    if isinstance(template, _Number):
        return leaves[template.index].item()
    if type(template) in (tuple, list):
        return type(template)(_rebuild(item, leaves) for item in template)
    if type(template) is dict:
        return {key: _rebuild(item, leaves) for key, item in template.items()}
    return template


def _source(detail: dict[str, Any]) -> Source:
    return Source(detail.get("owner"), tuple(detail.get("tags", ())),
                  policy_from_json(detail.get("policy")))  # fmt: skip
