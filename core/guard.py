"""The worker side of privacy: which objects are private, what is derived from them, and
what may leave.

A :class:`PrivacyGuard` belongs to one :class:`~bastion.Worker`, whose handlers ask it before
anything leaves (``get``, ``move``, a shipped function's value). It answers with a
:class:`Verdict` and changes nothing: the worker records what it decided, and the events
change the state the guard reads. The rules:

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
``release`` events each DP release, so replay and a restarted worker rebuild it through
the one :func:`bastion.stores.state.apply`. Workers that hold nothing private pay one dict
check per operation.

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
    from bastion.stores.state import WorkerState

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


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard decided about data that would leave.

    ``why`` set: refused (the worker records a ``denied`` event and raises). Otherwise it
    leaves: ``release`` is the detail of the ``release`` event the worker appends first (None:
    no event), ``value``/``digest`` what leaves when the guard changed it (``noised``).
    """

    why: str | None = None
    release: dict[str, Any] | None = None
    value: Any = None
    digest: str | None = None
    noised: bool = False


def _storage_key(value: Any) -> int:
    try:
        return value.untyped_storage().data_ptr() if value.numel() else 0
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return 0


class PrivacyGuard:
    """One worker's privacy decisions (``worker.privacy``), read off its
    :class:`~bastion.stores.state.WorkerState`: the guard holds no state of its own and
    changes none; every label, source, policy and budget spent comes from the events."""

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._policies: dict[str, ReleasePolicy | None] = {}

    # ------------------------------------------------------------------ what the events say

    @property
    def labels(self) -> dict[int, frozenset[int]]:
        """Live private or private-derived objects -> the private ids they come from."""
        return self.state.labels

    @property
    def originals(self) -> set[int]:
        """Live objects that are private themselves (registered, not derived)."""
        return self.state.originals

    @property
    def sources(self) -> dict[int, Source]:
        """Every object ever registered private, by id (derived labels name them)."""
        return {oid: self._source(oid) for oid in self.state.sources}

    @property
    def default(self) -> ReleasePolicy:
        """The worker's release policy (``Deny()`` until its owner sets one)."""
        policy = self.state.policy
        return (self._policy(policy["default"]) if policy else None) or Deny()

    @property
    def budget(self) -> Budget | None:
        """Each peer's DP budget on this worker (None: no DP release is possible)."""
        policy = self.state.policy
        data = policy.get("budget") if policy else None
        return None if data is None else Budget(**data)

    def _policy(self, data: dict[str, Any] | None) -> ReleasePolicy | None:
        if data is None:
            return None
        key = json.dumps(data, sort_keys=True)
        if key not in self._policies:
            self._policies[key] = policy_from_json(data)
        return self._policies[key]

    def _source(self, obj_id: int) -> Source:
        data = self.state.sources.get(obj_id)
        if data is None:  # named by a label but never registered here: private to no one
            return Source(None, (), Deny())
        return Source(data.get("owner"), tuple(data.get("tags", ())),
                      self._policy(data.get("policy")))  # fmt: skip

    def accountant(self, peer: str | None = None) -> Accountant:
        """The privacy spent by ``peer`` (None: by every peer together), from the ``release``
        events."""
        accountant = Accountant()
        steps = self.state.dp_total if peer is None else self.state.dp_steps.get(peer, ())
        for noise_multiplier, sample_rate in steps:
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        return accountant

    # ------------------------------------------------------------------ event details

    def source_detail(self, owner: str | None, tags: Iterable[str],
                      policy: ReleasePolicy | str | None) -> dict[str, Any]:  # fmt: skip
        """The ``create`` detail that registers an object private (validated)."""
        tags = tuple(tags)
        if not all(isinstance(tag, str) and tag for tag in tags):
            raise ConfigurationError(f"tags are non-empty strings, got {tags!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ConfigurationError(f"owner is a peer id (a non-empty string), got {owner!r}")
        return Source(owner, tags, as_policy(policy)).to_json()

    def policy_detail(self, policy: ReleasePolicy | str, budget: Budget | None) -> dict[str, Any]:
        """The ``policy`` event's detail for a default release policy and per-peer budget."""
        resolved = as_policy(policy)
        if resolved is None:
            raise ConfigurationError("set_release_policy() needs a policy: 'deny', 'allow' or DP")
        if budget is not None and not isinstance(budget, Budget):
            raise ConfigurationError(f"budget is a Budget(epsilon, delta), not {budget!r}")
        return {"default": resolved.to_json(),
                "budget": None if budget is None else budget.to_json()}  # fmt: skip

    def label(self, obj_id: int, taint: frozenset[int]) -> dict[str, Any]:
        """The privacy label of a result derived from ``taint``, as ``create`` detail."""
        if obj_id in self.state.originals:  # written in place: still the owner's private object
            return dict(self.state.sources[obj_id], private=True)
        current = self.state.labels.get(obj_id)
        if current is not None:
            taint = current | taint
        return {"derived": True, "sources": sorted(taint)}

    # ------------------------------------------------------------------ taint

    def taint(self, ids: Iterable[int]) -> frozenset[int] | None:
        """The private sources of objects ``ids`` together (None when none is tainted)."""
        labels = self.state.labels
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
        sources = self.state.sources
        if sources and not self.owns(peer, sources):
            everything = frozenset(sources)
            taint = everything if taint is None else taint | everything
        return taint

    def snapshot(self, inputs: dict[int, int]) -> dict[int, int]:
        """Version counters of the tensor inputs, to see afterwards which were written."""
        objects, versions = self.state.store.objects, {}
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
        objects = self.state.store.objects
        if everything or writes_arguments(op, kwargs):
            written = {i for i in inputs.values() if isinstance(objects.get(i), torch.Tensor)}
        else:
            written = {i for i, v in versions.items()
                       if i in objects and objects[i]._version != v}  # fmt: skip
        if _is_backward(op):
            written |= {i for i, value in objects.items() if isinstance(value, torch.Tensor)
                        and (value.is_leaf or value.retains_grad) and value.grad is not None}
        if written:  # views and other tensors sharing their memory were written too
            keys = {_storage_key(objects[i]) for i in written} - {0}
            if keys:
                written |= {i for i, value in objects.items() if isinstance(value, torch.Tensor)
                            and _storage_key(value) in keys}  # fmt: skip
        return written

    # ------------------------------------------------------------------ decisions

    def owns(self, peer: str, sources: Iterable[int]) -> bool:
        """True when ``peer`` registered every one of ``sources``."""
        registered = self.state.sources
        return all((data := registered.get(s)) is not None and data.get("owner") is not None
                   and data.get("owner") == peer for s in sources)  # fmt: skip

    def policy_for(self, sources: frozenset[int]) -> tuple[ReleasePolicy, str]:
        """The strictest of the sources' policies (a source without one has the default),
        and why a refusal under it is one."""
        default = self.default
        policies = {self._source(s).policy or default for s in sources}
        if any(isinstance(p, Deny) for p in policies):
            return Deny(), "the release policy is deny"
        dp = {p for p in policies if isinstance(p, DP)}
        if len(dp) > 1:
            return Deny(), "its sources have different dp policies; give them one policy"
        return (dp.pop(), "") if dp else (Allow(), "")

    def check_move(self, obj_id: int, peer: str, destination: str) -> Verdict | None:
        """May ``peer`` move ``obj_id`` to ``destination``? None: yes, nothing to record."""
        sources = self.state.labels.get(obj_id)
        if sources is None or self.owns(peer, sources):
            return None
        if obj_id in self.state.originals:
            return Verdict("the object is private: only its owner may move it; compute on it "
                           "where it is")
        policy, why = self.policy_for(sources)
        if isinstance(policy, Allow):
            return Verdict(release=_release_detail("move", sources, {
                "mechanism": "allow", "destination": destination}))
        if isinstance(policy, DP):
            why = ("the release policy is dp: it leaves only through get(), with noise; a move "
                   "would carry the exact value")
        return Verdict(f"the object is computed from private data and {why}")

    def check_get(self, obj_id: int, value: Any, peer: str, with_grad: bool) -> Verdict | None:
        """May ``peer`` fetch ``obj_id``? None: it leaves as it is, nothing to record."""
        sources = self.state.labels.get(obj_id)
        if sources is None or self.owns(peer, sources):
            return None
        if obj_id in self.state.originals:
            return Verdict("the object is private: only its owner may fetch it; compute on it "
                           "and ask for a release of the result")
        grad = value.grad if with_grad and isinstance(value, torch.Tensor) and value.is_leaf \
            else None  # fmt: skip
        verdict = self.release(sources, (value, grad), peer, "get")
        if verdict is not None and verdict.why is None and not verdict.noised:
            return Verdict(release=verdict.release)  # allowed as it is: (value, grad) unchanged
        return verdict

    def release(self, sources: frozenset[int], value: Any, peer: str, request: str,
                obj_id: int | None = None, digest: str | None = None,
                ) -> Verdict | None:  # fmt: skip
        """May ``value``, derived from ``sources``, leave to ``peer``? As the policy says:
        None (``peer`` owns the sources), a release as it is (``allow``), a noised release
        (``dp``: tensors and numbers in tuples, lists and dicts clipped together and noised),
        or a refusal."""
        if self.owns(peer, sources):
            return None
        policy, why = self.policy_for(sources)
        if isinstance(policy, Allow):
            return Verdict(release=_release_detail(request, sources, {"mechanism": "allow"}),
                           digest=digest)  # fmt: skip
        if isinstance(policy, Deny):
            return Verdict(f"the object is computed from private data and {why}")
        return self._dp_release(value, peer, request, sources, policy)

    def _dp_release(self, value: Any, peer: str, request: str, sources: frozenset[int],
                    policy: DP) -> Verdict:  # fmt: skip
        leaves: list[torch.Tensor] = []
        try:
            template = _flatten(value, leaves)
        except TypeError as exc:
            return Verdict(f"a dp release is of real tensors and numbers (in tuples, lists or "
                           f"dicts), not {exc}")
        budget = self.budget
        if budget is None:
            return Verdict("the release policy is dp but the worker sets no privacy budget "
                           "(set_release_policy(..., budget=Budget()))")
        z = policy.noise_multiplier
        accountant = self.accountant(peer)
        spent = accountant.epsilon(budget.delta)
        after = accountant.epsilon_after(noise_multiplier=z, delta=budget.delta)
        if after > budget.epsilon:
            return Verdict(f"privacy budget spent: this release would bring epsilon to "
                           f"{after:.4g}, past the budget {budget.epsilon:g} (spent {spent:.4g}, "
                           f"delta {budget.delta:g})")
        if budget.total_epsilon is not None:
            total = self.accountant().epsilon_after(noise_multiplier=z, delta=budget.delta)
            if total > budget.total_epsilon:
                return Verdict(f"the worker's total privacy budget is spent: this release "
                               f"would bring it to {total:.4g}, past {budget.total_epsilon:g}")
        noised = gaussian_release(leaves, policy.clip, z)
        released = _rebuild(template, noised)
        digest = _leaves_digest(noised)
        return Verdict(release=_release_detail(request, sources, {
            "mechanism": "gaussian", "accountant": accountant.mechanism, "noise_multiplier": z,
            "sigma": policy.sigma, "sensitivity": policy.clip, "sample_rate": 1.0,
            "epsilon_spent": after - spent, "epsilon_total": after,
            "epsilon_budget": budget.epsilon, "delta": budget.delta,
        }), value=released, digest=digest, noised=True)

    def filter_delete(self, ids: Iterable[int], peer: str) -> tuple[list[int], list[int]]:
        """``(ids peer may delete, another owner's private objects it may not)``."""
        allowed, kept = [], []
        originals, labels = self.state.originals, self.state.labels
        for obj_id in ids:
            if obj_id in originals and not self.owns(peer, labels[obj_id]):
                kept.append(obj_id)
            else:
                allowed.append(obj_id)
        return allowed, kept

    def budget_report(self, peer: str) -> BudgetReport:
        """What ``peer`` has spent and has left."""
        accountant = self.accountant(peer)
        budget = self.budget
        spent = accountant.epsilon(budget.delta) if budget is not None else 0.0
        left = None if budget is None else max(budget.epsilon - spent, 0.0)
        policy = None  # what a shipped function's value leaves under (see call_taint)
        sources = self.state.sources
        if sources and not self.owns(peer, sources):
            policy = self.policy_for(frozenset(sources))[0].to_json()
        return BudgetReport(peer, None if budget is None else budget.epsilon,
                            None if budget is None else budget.delta, spent, left,
                            sum(steps for _, _, steps in accountant.history),
                            accountant.mechanism, policy)  # fmt: skip


def _release_detail(request: str, sources: frozenset[int], detail: dict[str, Any]
                    ) -> dict[str, Any]:  # fmt: skip
    return {"request": request, "sources": sorted(sources), **detail}


def value_digest(value: Any) -> str | None:
    """The digest of a value that leaves without being stored (tensors and numbers in
    tuples, lists and dicts; the same as a DP release computes), or None for other values.

    >>> value_digest({"w": torch.ones(2)}) == value_digest(torch.ones(2))
    True
    """
    leaves: list[torch.Tensor] = []
    try:
        _flatten(value, leaves)
    except TypeError:
        return None
    return _leaves_digest(leaves) if leaves else None


def _leaves_digest(leaves: list[torch.Tensor]) -> str:
    return (payload_digest(leaves[0]) if len(leaves) == 1 else
            payload_digest(tuple(payload_digest(t) for t in leaves)))  # fmt: skip


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
