"""Private objects, taint, release policies, DP releases with a budget, and a worker that
stays private after a restart."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant

import bastion as sy
from bastion.events import payload_digest
from bastion.pointer import PointerTensor
from bastion.privacy import as_policy, gaussian_release


def as_peer(worker: sy.VirtualWorker, peer: str) -> sy.RemoteWorker:
    return sy.connect(worker.address, peer=peer)


def pointer_to(handle, obj_id: int) -> PointerTensor:
    return PointerTensor._make(handle, handle.list_objects()[obj_id])


# ------------------------------------------------------------------ flags and lineage


def test_register_and_derived_results_are_flagged_in_the_log(m1):
    x = m1.register(torch.tensor([1.0, 2.0]), tags=["#ages", "#toy"], policy="allow")
    y = x * 2
    z = m1.send(torch.ones(2)) + 1
    create = {e.object_id: e for e in m1.audit.events(kind="create")}
    assert create[x.id_at_location].origin == "register"
    assert create[x.id_at_location].detail == {
        "private": True, "owner": "me", "tags": ["#ages", "#toy"], "policy": {"kind": "allow"},
    }  # fmt: skip
    assert create[y.id_at_location].detail == {"derived": True, "sources": [x.id_at_location]}
    assert create[z.id_at_location].detail == {}


def test_the_owner_fetches_private_and_derived_data_without_a_release(m1):
    x = m1.register(torch.tensor([1.0, 2.0]))
    assert torch.equal((x + 1).get(), torch.tensor([2.0, 3.0]))
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0]))
    assert m1.audit.events(kind="release") == [] and m1.audit.events(kind="denied") == []


def test_a_registered_pointer_does_not_delete_the_data_when_collected(m1):
    obj_id = m1.register(torch.ones(2)).id_at_location
    m1.list_objects()  # sends pending deletes, if any
    assert obj_id in m1._objects


def test_non_private_registration_with_tags(m1):
    x = m1.register(torch.ones(2), private=False, tags=["#public"])
    (event,) = m1.audit.events(kind="create")
    assert event.detail == {"tags": ["#public"]}
    eve = as_peer(m1, "eve")
    assert torch.equal(pointer_to(eve, x.id_at_location).get(), torch.ones(2))


def test_registered_data_is_found_by_search_and_stays_private(make_worker):
    """Tags given at registration are what ``search`` matches, on any transport; what a
    search returns is computed on, not fetched."""
    owner = make_worker()
    x = owner.register(torch.arange(4.0), tags=["#ages", "#train"], description="ages")
    owner.register(torch.zeros(1), private=False, tags=["#ages"])
    eve = as_peer(owner, "eve")
    (found,) = eve.search("#ages", "#train")
    assert found.id_at_location == x.id_at_location
    assert (found.tags, found.description) == (("#ages", "#train"), "ages")
    assert len(eve.search("#ages")) == 2
    with pytest.raises(sy.PermissionDenied):
        found.get()
    mine = eve.send(torch.ones(4))
    mine.add_(found)  # an in-place write keeps the written object's tags, and taints it
    assert len(eve.search("#ages")) == 2
    with pytest.raises(sy.PermissionDenied):
        mine.get()
    found.tag("#more")  # a peer may tag it; it stays its owner's, and private
    with pytest.raises(sy.PermissionDenied):
        found.get()
    assert owner._worker.privacy.sources[x.id_at_location].owner == "me"


def test_a_federated_dataset_of_private_shards_is_found_by_its_tags(m1, m2):
    for worker, n in ((m1, 3), (m2, 5)):
        worker.register(torch.randn(n, 2), tags=["#toy", "#data"])
        worker.register(torch.zeros(n, dtype=torch.long), tags=["#toy", "#target"])
    peers = [as_peer(m1, "eve"), as_peer(m2, "eve")]
    fd = sy.FederatedDataset.search(peers, "#toy")
    assert fd.sizes == {m1.id: 3, m2.id: 5}
    with pytest.raises(sy.PermissionDenied):
        fd[m2.id].data.get()


def test_bad_registrations_and_policies_are_clear_errors(m1):
    with pytest.raises(sy.SerializationError, match="tensor"):
        m1.register([1, 2])
    with pytest.raises(sy.ConfigurationError, match="private=True"):
        m1.register(torch.ones(1), private=False, policy="allow")
    with pytest.raises(sy.ConfigurationError, match="a tag is a non-empty string"):
        m1.register(torch.ones(1), tags=[""])
    with pytest.raises(sy.ConfigurationError, match="description"):
        m1.register(torch.ones(1), description=3)
    with pytest.raises(sy.ConfigurationError, match="release policy"):
        as_policy("maybe")
    with pytest.raises(sy.ConfigurationError, match="noise_multiplier"):
        sy.DP(noise_multiplier=0.0, clip=1.0)
    with pytest.raises(sy.ConfigurationError, match="clip"):
        sy.DP(noise_multiplier=1.0, clip=float("inf"))
    with pytest.raises(sy.ConfigurationError, match="delta"):
        sy.Budget(epsilon=1.0, delta=2.0)
    with pytest.raises(sy.ConfigurationError, match="budget"):
        m1.set_release_policy("allow", budget=(1.0, 1e-5))


# ------------------------------------------------------------------ release policies


def test_allow_releases_derived_data_and_audits_each_release(make_worker):
    alice, other = make_worker("alice"), make_worker("other")
    alice.set_release_policy("allow")
    x = alice.register(torch.tensor([1.0, 2.0]))
    eve = as_peer(alice, "eve")
    ex = pointer_to(eve, x.id_at_location)
    assert torch.equal((ex * 3).get(), torch.tensor([3.0, 6.0]))
    (ex + 1).move(other)
    with pytest.raises(sy.PermissionDenied, match="private"):
        ex.get()  # the raw data is still the owner's alone
    releases = alice.audit.events(kind="release")
    assert [(e.peer, e.detail["request"], e.detail["mechanism"]) for e in releases] == [
        ("eve", "get", "allow"), ("eve", "move", "allow"),
    ]  # fmt: skip
    assert all(e.detail["sources"] == [x.id_at_location] for e in releases)
    (policy,) = alice.audit.events(kind="policy")
    assert policy.detail == {"default": {"kind": "allow"}, "budget": None}


def test_the_strictest_policy_of_the_sources_wins(m1):
    open_ = m1.register(torch.tensor([1.0]), policy="allow")
    closed = m1.register(torch.tensor([2.0]))  # the worker's default: deny
    dp_a = m1.register(torch.tensor([3.0]), policy=sy.DP(noise_multiplier=1.0, clip=1.0))
    dp_b = m1.register(torch.tensor([4.0]), policy=sy.DP(noise_multiplier=2.0, clip=1.0))
    m1.set_release_policy("deny", budget=sy.Budget(epsilon=100.0, delta=1e-5))
    eve = as_peer(m1, "eve")
    a, b, c, d = (pointer_to(eve, p.id_at_location) for p in (open_, closed, dp_a, dp_b))
    assert torch.equal((a * 2).get(), torch.tensor([2.0]))
    with pytest.raises(sy.PermissionDenied, match="deny"):
        (a + b).get()
    (a + c).get()  # allow and dp: dp
    assert m1.audit.events(kind="release")[-1].detail["mechanism"] == "gaussian"
    with pytest.raises(sy.PermissionDenied, match="different dp policies"):
        (c + d).get()


def test_a_dp_release_is_clipped_noised_and_accounted(m1):
    policy, budget = sy.DP(noise_multiplier=0.8, clip=2.0), sy.Budget(epsilon=50.0, delta=1e-6)
    m1.set_release_policy(policy, budget=budget)
    x = m1.register(torch.full((4000,), 3.0))  # norm 189.7: clipped to 2
    eve = as_peer(m1, "eve")
    ex = pointer_to(eve, x.id_at_location)
    released = (ex * 1).get()
    clipped = torch.full((4000,), 2.0 / math.sqrt(4000))
    noise = released - clipped
    assert abs(noise.std().item() - policy.sigma) < 0.1 * policy.sigma
    assert abs(noise.mean().item()) < 0.1
    (event,) = m1.audit.events(kind="release")
    expected = RDPAccountant()
    expected.step(noise_multiplier=0.8, sample_rate=1.0)
    epsilon = expected.get_epsilon(delta=1e-6)
    assert event.peer == "eve" and event.digest == payload_digest(released)
    assert event.detail["mechanism"] == "gaussian" and event.detail["sigma"] == policy.sigma
    assert event.detail["noise_multiplier"] == 0.8 and event.detail["sensitivity"] == 2.0
    assert event.detail["epsilon_spent"] == pytest.approx(epsilon)
    assert event.detail["delta"] == 1e-6 and event.detail["epsilon_budget"] == 50.0
    report = eve.privacy_budget()
    assert report.spent == pytest.approx(epsilon) and report.left == pytest.approx(50 - epsilon)
    (get,) = m1.audit.events(kind="get")
    assert get.digest == event.digest and get.detail == {"released": "dp"}


def test_dp_releases_numbers_and_refuses_other_objects(m1):
    m1.set_release_policy(sy.DP(noise_multiplier=1.0, clip=1.0),
                          budget=sy.Budget(epsilon=100.0, delta=1e-5))  # fmt: skip
    x = m1.register(torch.tensor([0.25, 0.25]))
    ex = pointer_to(as_peer(m1, "eve"), x.id_at_location)
    assert isinstance(ex.sum().item().get(), float)
    noised = ex.tolist().get()  # numbers in lists are released together
    assert isinstance(noised, list) and len(noised) == 2 and isinstance(noised[0], float)
    with pytest.raises(sy.PermissionDenied, match="real tensors and numbers"):
        ex.type().get()  # a string


def test_dp_without_a_budget_is_refused(m1):
    m1.set_release_policy(sy.DP(noise_multiplier=1.0, clip=1.0))
    x = m1.register(torch.ones(2))
    with pytest.raises(sy.PermissionDenied, match="no privacy budget"):
        (pointer_to(as_peer(m1, "eve"), x.id_at_location) * 1).get()


def test_budgets_are_per_peer_and_total_epsilon_caps_them_all(m1):
    m1.set_release_policy(sy.DP(noise_multiplier=2.0, clip=1.0),
                          budget=sy.Budget(epsilon=4.5, delta=1e-5, total_epsilon=5.5))
    x = m1.register(torch.ones(3))
    one = RDPAccountant()
    one.step(noise_multiplier=2.0, sample_rate=1.0)
    eve, bob = as_peer(m1, "eve"), as_peer(m1, "bob")
    assert eve.privacy_budget().spent == 0.0 and eve.privacy_budget().left == 4.5
    pointer_to(eve, x.id_at_location).sum().get()
    with pytest.raises(sy.PermissionDenied, match="privacy budget spent"):
        for _ in range(10):
            pointer_to(eve, x.id_at_location).sum().get()
    spent = eve.privacy_budget().spent
    assert bob.privacy_budget().spent == 0.0 and spent > one.get_epsilon(delta=1e-5)
    pointer_to(bob, x.id_at_location).sum().get()  # bob has his own budget...
    with pytest.raises(sy.PermissionDenied, match="total privacy budget"):
        for _ in range(10):
            pointer_to(bob, x.id_at_location).sum().get()  # ...within the worker's total
    assert eve.privacy_budget().spent == spent


def test_a_worker_with_no_budget_reports_none(m1):
    report = m1.privacy_budget()
    assert (report.peer, report.epsilon, report.left, report.spent) == ("me", None, None, 0.0)
    assert report.policy is None  # nothing private on it


def test_a_peer_learns_the_policy_its_shipped_code_s_values_leave_under(make_worker):
    owner = make_worker()
    eve = as_peer(owner, "eve")
    assert eve.privacy_budget().policy is None
    owner.register(torch.ones(2), policy="allow")
    assert eve.privacy_budget().policy == {"kind": "allow"}
    assert owner.privacy_budget().policy is None  # the owner's own data: nothing applies
    owner.register(torch.ones(2))  # under the worker's default: deny, the strictest
    assert eve.privacy_budget().policy == {"kind": "deny"}
    owner.set_release_policy(sy.DP(noise_multiplier=2.0, clip=0.5))
    assert eve.privacy_budget().policy == {"kind": "dp", "noise_multiplier": 2.0, "clip": 0.5}


# ------------------------------------------------------------------ restart


def test_a_restarted_worker_stays_private_and_keeps_what_was_spent(tmp_path):
    db = str(tmp_path / "alice.db")
    worker = sy.Worker("alice", db=db, durability="strict")
    worker.set_release_policy(sy.DP(noise_multiplier=1.5, clip=1.0),
                              budget=sy.Budget(epsilon=20.0, delta=1e-5))  # fmt: skip
    obj_id = worker.register(torch.ones(3), owner="alice-laptop", tags=["#t"], policy="allow")
    other = worker.register(torch.ones(3), owner="alice-laptop")
    from bastion.messages import Delete, Get, Ref, RunOp

    for _ in range(3):
        spec = worker.handle(RunOp("torch.sum", (Ref(other),), {}), peer="eve").value
        assert worker.handle(Get(spec.id), peer="eve").ok
    derived = worker.handle(RunOp("torch.mul", (Ref(obj_id), 2), {}), peer="eve").value.id
    still = worker.handle(RunOp("torch.sub", (Ref(other), 1), {}), peer="eve").value.id
    assert worker.handle(Delete([other]), peer="alice-laptop").value == 1
    assert other not in worker.store and worker.privacy.labels[still] == {other}
    before = worker.privacy_budget("eve")
    labels, sources = dict(worker.privacy.labels), dict(worker.privacy.sources)
    worker.close()

    again = sy.Worker("alice", db=db)
    assert again.recovered is not None and again.privacy.labels == labels
    assert again.privacy.sources == sources
    assert again.privacy.sources[obj_id].owner == "alice-laptop"
    assert again.privacy.default == sy.DP(noise_multiplier=1.5, clip=1.0)
    assert again.privacy.budget == sy.Budget(epsilon=20.0, delta=1e-5)
    assert again.privacy_budget("eve") == before and before.releases == 3
    refused = again.handle(Get(obj_id), peer="eve")
    assert refused.error.type_name == "PermissionDenied" and "private" in refused.error.message
    assert again.handle(Get(derived), peer="eve").ok  # its source's policy: allow
    assert again.handle(Get(obj_id), peer="alice-laptop").ok  # the owner
    again.close()


# ------------------------------------------------------------------ the parts


def test_the_accountant_grows_with_releases_and_shrinks_with_noise():
    a, b = sy.Accountant(), sy.Accountant()
    a.step(noise_multiplier=1.0)
    b.step(noise_multiplier=2.0)
    assert a.epsilon(1e-5) > b.epsilon(1e-5) > 0
    after = a.epsilon_after(noise_multiplier=1.0, delta=1e-5)
    assert after > a.epsilon(1e-5) and a.history == [(1.0, 1.0, 1)]
    a.step(noise_multiplier=1.0)
    assert a.epsilon(1e-5) == pytest.approx(after) and a.history == [(1.0, 1.0, 2)]
    prv = sy.Accountant("prv")
    prv.step(noise_multiplier=1.0, steps=2)
    assert 0 < prv.epsilon(1e-5) <= a.epsilon(1e-5) * 1.05
    with pytest.raises(sy.ConfigurationError):
        sy.Accountant("moments")
    with pytest.raises(sy.ConfigurationError):
        a.step(noise_multiplier=1.0, sample_rate=0.0)


def test_gaussian_release_clips_the_values_together():
    big = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]], dtype=torch.float64),
           torch.tensor([0], dtype=torch.int64)]  # fmt: skip
    out = gaussian_release(big, clip=1.0, noise_multiplier=1e-12)
    assert [t.dtype for t in out] == [torch.float32, torch.float64, torch.float32]
    assert [t.shape for t in out] == [t.shape for t in big]
    assert torch.allclose(out[0], torch.tensor([0.6, 0.0])) and out[1].item() == pytest.approx(0.8)
    small = gaussian_release([torch.tensor([0.3, 0.4])], clip=1.0, noise_multiplier=1e-12)
    assert torch.allclose(small[0], torch.tensor([0.3, 0.4]))
    one, two = (gaussian_release([torch.zeros(8)], clip=1.0, noise_multiplier=1.0)[0]
                for _ in range(2))  # fmt: skip
    assert not torch.equal(one, two), "fresh noise for each release"


def test_a_structured_value_is_released_as_one_vector():
    worker = sy.Worker("structured")
    worker.set_release_policy(sy.DP(noise_multiplier=1e-9, clip=1.0),
                              budget=sy.Budget(epsilon=1e30, delta=1e-5))  # fmt: skip
    x = worker.register(torch.ones(1), owner="alice")
    update = {"w": torch.tensor([[3.0]]), "b": [torch.tensor([0.0]), 4.0], "none": None}
    verdict = worker.privacy.release(frozenset({x}), update, "eve", "call")
    released, digest = verdict.value, verdict.digest
    assert worker.log.events(kind="release") == [], "the guard decides; it records nothing"
    worker._release(verdict, None, "eve", "call")  # the worker records what it decided
    assert released["w"].item() == pytest.approx(0.6) and released["b"][1] == pytest.approx(0.8)
    assert released["none"] is None and isinstance(released["b"][1], float)
    (event,) = worker.log.events(kind="release")
    assert event.object_id is None and event.digest == digest and event.detail["request"] == "call"
    assert worker.privacy.release(frozenset({x}), update, "alice", "call") is None  # the owner
    nobody = worker.register(torch.ones(1))  # owner None: no peer owns it
    assert worker.privacy.release(frozenset({nobody}), update, None, "call") is not None
    worker.close()
