"""Federated training on private data, only through the owners' release policies: allowed
updates (each release audited), DP-FedAvg with the noise on the server or on the workers
(epsilon per round, a target that stops the training), and DP-SGD on the workers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from opacus.accountants import RDPAccountant

import bastion as sy
from bastion.cli import cli
from bastion.federated import (
    DPSGD,
    ClientUpdate,
    DPFedAvg,
    FedAvg,
    FederatedDataset,
    FederatedError,
    FederatedTrainer,
    FedProx,
    PrivacyBudgetSpent,
    WorkerDropped,
    clip_update,
)
from bastion.federated.digits import (
    BATCH_SIZE,
    LR,
    digits_model,
    load_digits_data,
    private_digits,
)


def rdp_epsilon(steps: list[tuple[float, float, int]], delta: float = 1e-5) -> float:
    """Epsilon straight from the accountant package, for comparison."""
    accountant = RDPAccountant()
    accountant.history = steps
    return accountant.get_epsilon(delta=delta)


@pytest.fixture
def owners(make_worker, toy_data):
    """Two data owners' workers (in memory, direct and serialized), each with 40 private toy
    samples tagged #toy, and ``peers(policy)``: the data scientist's dataset found by search
    after the owners set ``policy``."""
    workers = [make_worker("owner", allow_code=True) for _ in range(2)]
    for seed, worker in enumerate(workers):
        x, y = toy_data(40, seed=seed)
        worker.register(x, tags=["#toy", "#data"])
        worker.register(y, tags=["#toy", "#target"])

    def peers(policy, budget=None):
        for worker in workers:
            worker.set_release_policy(policy, budget=budget)
        return FederatedDataset.search([sy.connect(w.address, peer="scientist")
                                        for w in workers], "#toy")  # fmt: skip

    return workers, peers


def _logged(workers, kind):
    return [e for w in workers for e in w.audit.events(kind=kind)]


# ---------------------------------------------------------------------- the digits setup


@pytest.mark.parametrize("transport", ["memory", "tcp"])
def test_server_side_dp_fedavg_on_private_digits_stays_above_eighty_percent(transport):
    """The digits setup (10 owners, MLP 64-64-10, SGD lr 0.1, batch 32, 20 rounds) with
    DP-FedAvg at noise multiplier 1.0, clip 0.3, the noise added to the aggregate: the owners
    allow the clipped updates out, each release is in their logs."""
    x_test, y_test = load_digits_data()[2:]
    with private_digits(10, transport, policy="allow") as (owners, data):
        trainer = FederatedTrainer(
            digits_model(0), data, DPFedAvg(noise_multiplier=1.0, clip=0.3), rounds=20,
            batch_size=BATCH_SIZE, lr=LR, eval_data=(x_test, y_test),
        )  # fmt: skip
        history = trainer.fit()
        releases = [e for owner in owners for e in owner.log.events(kind="release")]
        gets = [e for owner in owners for e in owner.log.events(kind="get")]
    assert len(history) == 20 and history[-1].accuracy > 0.8
    epsilons = history.as_dict()["epsilon"]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:])), "epsilon grows with rounds"
    assert epsilons[-1] == pytest.approx(rdp_epsilon([(1.0, 1.0, 20)]))
    assert history[-1].delta == 1e-5 and all(math.isnan(r.loss) for r in history)
    assert len(releases) == 200 == len(gets)  # every update of every round, audited
    assert {(e.peer, e.detail["request"], e.detail["mechanism"]) for e in releases} == {
        ("scientist", "call", "allow")}  # fmt: skip
    assert {e.origin for e in gets} == {"call"}


def test_the_trainer_stops_before_a_round_would_pass_the_target_epsilon(owners):
    workers, peers = owners
    data = peers("allow")
    dp = DPFedAvg(noise_multiplier=1.0, clip=1.0, target_epsilon=10.0)
    trainer = FederatedTrainer(nn.Linear(4, 2), data, dp, rounds=10, batch_size=8, lr=0.3)
    history = trainer.fit()
    # 4.73, 7.08, 9.01 after rounds 1-3; a fourth would reach 10.73
    assert [round(e, 2) for e in history.as_dict()["epsilon"]] == [4.73, 7.08, 9.01]
    assert "round 4 would bring epsilon to 10.73, past the target 10" in trainer.stopped
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(PrivacyBudgetSpent, match="past the target"):
        trainer.round()
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in state.items())
    assert len(_logged(workers, "release")) == 3 * 2, "no update left after the budget"


# ------------------------------------------------------------------ the owners' policies


def test_private_data_under_deny_trains_nothing(owners):
    workers, peers = owners
    data = peers("deny")
    trainer = FederatedTrainer(nn.Linear(4, 2), data, FedAvg(), rounds=1, batch_size=8)
    with pytest.warns(WorkerDropped, match="release policy is deny: no update may leave"), \
            pytest.raises(FederatedError, match="0 of 2 workers"):  # fmt: skip
        trainer.fit()
    assert _logged(workers, "release") == [] and _logged(workers, "get") == []


def test_allowed_updates_leave_without_dp_each_release_audited(owners):
    workers, peers = owners
    history = FederatedTrainer(nn.Linear(4, 2), peers("allow"), FedAvg(), rounds=2,
                               batch_size=8, lr=0.3).fit()  # fmt: skip
    assert history[-1].epsilon is None and not math.isnan(history[-1].loss)
    assert len(_logged(workers, "release")) == 4


def test_server_side_dp_fedavg_the_pysyft_way_under_allow(owners):
    """Driven through pointers: the model comes back (each parameter a release) and is
    clipped here, the noise added to the sum here."""
    workers, peers = owners
    data = peers("allow")
    trainer = FederatedTrainer(nn.Linear(4, 2), data, DPFedAvg(1.0, 1.0), rounds=2,
                               batch_size=10, lr=0.5, style="pointers")  # fmt: skip
    history = trainer.fit()
    assert history.as_dict()["epsilon"] == pytest.approx(
        [rdp_epsilon([(1.0, 1.0, r)]) for r in (1, 2)])  # fmt: skip
    releases = _logged(workers, "release")
    assert releases and {e.detail["request"] for e in releases} == {"get"}


def test_client_side_dp_is_added_and_accounted_by_the_owners_workers(owners):
    """Owners who require DP: each worker clips and noises the update it releases and spends
    the scientist's budget; the trainer's epsilon is the workers' own; past their budget the
    workers refuse."""
    workers, peers = owners
    data = peers(sy.DP(noise_multiplier=1.0, clip=0.5), sy.Budget(epsilon=12.5, delta=1e-5))
    dp = DPFedAvg(noise_multiplier=1.0, clip=0.5, side="client")
    trainer = FederatedTrainer(nn.Linear(4, 2), data, dp, rounds=5, batch_size=8, lr=0.3)
    history = trainer.fit()
    for worker in workers:
        report = worker._worker.privacy_budget("scientist")
        assert report.releases == 5 and report.spent == pytest.approx(history[-1].epsilon)
    releases = _logged(workers, "release")
    assert len(releases) == 10 and {e.detail["mechanism"] for e in releases} == {"gaussian"}
    assert {e.detail["sensitivity"] for e in releases} == {0.5}
    # A sixth round would bring each worker's epsilon to 13.78 > 12.5: both refuse.
    with pytest.warns(WorkerDropped, match="privacy budget spent"), \
            pytest.raises(FederatedError, match="0 of 2 workers"):  # fmt: skip
        trainer.round()
    assert len(_logged(workers, "release")) == 10


@pytest.mark.parametrize("strategy", [
    FedAvg(), DPFedAvg(1.0, 0.5), DPFedAvg(1.0, 0.4, side="client"),
    DPFedAvg(2.0, 0.5, side="client"),
])  # fmt: skip
def test_workers_requiring_dp_need_the_matching_client_side_dp_fedavg(owners, strategy):
    workers, peers = owners
    data = peers(sy.DP(noise_multiplier=1.0, clip=0.5), sy.Budget(epsilon=50.0, delta=1e-5))
    trainer = FederatedTrainer(nn.Linear(4, 2), data, strategy, rounds=1, batch_size=8)
    wanted = r"DPFedAvg\(noise_multiplier=1, clip=0.5, side='client'\)"
    with pytest.warns(WorkerDropped, match=wanted), pytest.raises(FederatedError):
        trainer.fit()
    assert _logged(workers, "release") == []


def test_client_side_noise_from_the_shipped_code_under_allow(owners):
    """Owners who allow updates out, a scientist who adds the noise on the client anyway:
    with nothing learned (lr 0) the model moves by the noise alone, sigma / clients."""
    workers, peers = owners
    model = nn.Linear(64, 64)
    peers("allow")
    x = torch.randn(8, 64)
    for worker in workers:  # a dataset the model fits: 8 samples of 64 features
        worker.register(x, tags=["#wide", "#data"])
        worker.register(torch.zeros(8, dtype=torch.long), tags=["#wide", "#target"])
    data = FederatedDataset.search([sy.connect(w.address, peer="scientist") for w in workers],
                                   "#wide")  # fmt: skip
    before = model.weight.detach().clone()
    dp = DPFedAvg(noise_multiplier=2.0, clip=0.5, side="client")
    FederatedTrainer(model, data, dp, rounds=1, batch_size=8, lr=0.0).fit()
    moved = (model.weight.detach() - before).std().item()
    expected = 2.0 * 0.5 * math.sqrt(2) / 2  # two clients' noise averaged
    assert 0.8 * expected < moved < 1.2 * expected


def test_client_side_dp_needs_the_fast_way():
    with pytest.raises(sy.ConfigurationError, match="style='fast'"):
        FederatedTrainer(nn.Linear(4, 2), [sy.VirtualWorker(id="dp-ptr")], DPFedAvg(
            side="client"), style="pointers", tags=["#x"])  # fmt: skip


# ---------------------------------------------------------------------- the strategy


def test_client_updates_are_clipped_together_and_noised_on_the_chosen_side():
    g = {"w": torch.zeros(3, 4), "b": torch.zeros(4), "n": torch.tensor(0)}
    local = {"w": torch.full((3, 4), 2.0), "b": torch.ones(4), "n": torch.tensor(5)}
    clipped = DPFedAvg(1.0, 0.5).client_update(g, local)
    norm = torch.cat([clipped["w"].reshape(-1), clipped["b"]]).norm()
    assert norm.item() == pytest.approx(0.5) and clipped["n"].item() == 0
    assert torch.allclose(clipped["w"] / clipped["b"][0], torch.full((3, 4), 2.0))
    client = DPFedAvg(1.0, 0.5, side="client")
    assert not torch.allclose(client.client_update(g, local)["w"], clipped["w"])
    assert torch.allclose(client.client_update(g, local, noise=False)["w"], clipped["w"])
    small = clip_update({"w": torch.tensor([0.1, 0.2])}, 1.0)
    assert torch.equal(small["w"], torch.tensor([0.1, 0.2]))


def test_server_side_noise_is_on_the_sum_and_the_average_is_uniform():
    dp = DPFedAvg(noise_multiplier=1.0, clip=1.0)
    g = {"w": torch.zeros(20_000)}
    dp.begin_round(1, ["a", "b", "c", "d"])  # four asked, two answer
    updates = [ClientUpdate("a", {"w": torch.full((20_000,), 0.4)}, 1),
               ClientUpdate("b", {"w": torch.full((20_000,), 0.2)}, 99)]  # fmt: skip
    out = dp.aggregate(g, updates)["w"]
    # (0.4 + 0.2) / 4 asked = 0.15; weighted by samples it would be 0.202, per answer 0.3
    assert out.mean().item() == pytest.approx(0.15, abs=0.02)
    assert out.std().item() == pytest.approx(1.0 / 4, rel=0.05)  # sigma on the sum, / 4
    assert dp.privacy_spent() == (pytest.approx(rdp_epsilon([(1.0, 1.0, 1)])), 1e-5)
    assert FedAvg().privacy_spent() is None


def test_dp_fedavg_wraps_another_strategy():
    dp = DPFedAvg(1.0, 1.0, strategy=sy.federated.FedAdam(lr=0.1))
    assert dp.name == "dp-fedadam" and "FedAdam" in repr(dp)
    model = nn.Linear(2, 1)
    prox = DPFedAvg(1.0, 1.0, strategy=FedProx(mu=2.0))
    assert prox.local_penalty(model, {k: v + 1 for k, v in model.state_dict().items()}) > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"noise_multiplier": 0}, "noise_multiplier"), ({"clip": -1}, "clip"),
    ({"side": "middle"}, "side"), ({"delta": 1.0}, "delta"), ({"target_epsilon": 0}, "target"),
    ({"strategy": DPFedAvg()}, "another DPFedAvg"),
])  # fmt: skip
def test_bad_dp_settings_are_clear_errors(kwargs, match):
    with pytest.raises(sy.ConfigurationError, match=match):
        DPFedAvg(**kwargs)


# ---------------------------------------------------------------------- DP-SGD


def test_dp_sgd_on_the_workers_reports_a_growing_record_level_epsilon(owners, toy_data):
    workers, peers = owners
    data = peers("allow")
    x, y = toy_data(200, seed=5)
    dp_sgd = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)
    trainer = FederatedTrainer(nn.Linear(4, 2), data, FedAvg(), rounds=3, batch_size=10,
                               lr=0.5, dp_sgd=dp_sgd, eval_data=(x, y))  # fmt: skip
    history = trainer.fit()
    epsilons = history.as_dict()["record_epsilon"]
    # 40 samples in batches of 10: sample rate 1/4, 4 steps a round
    assert epsilons == pytest.approx([rdp_epsilon([(1.0, 0.25, 4 * r)]) for r in (1, 2, 3)])
    assert history[-1].epsilon is None and math.isnan(history[-1].loss)
    assert history[-1].accuracy > 0.7, "DP-SGD still learns the toy problem"
    target = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=epsilons[1] + 0.01)
    stopped = FederatedTrainer(nn.Linear(4, 2), data, rounds=5, batch_size=10, dp_sgd=target)
    assert len(stopped.fit()) == 2 and "DP-SGD" in stopped.stopped


def test_dp_sgd_settings_are_checked(owners):
    _, peers = owners
    data = peers("allow")
    model = nn.Linear(4, 2)
    dp_sgd = DPSGD(1.0, 1.0)
    with pytest.raises(sy.ConfigurationError, match="style='fast'"):
        FederatedTrainer(model, data, dp_sgd=dp_sgd, style="pointers")
    with pytest.raises(sy.ConfigurationError, match="local penalty"):
        FederatedTrainer(model, data, FedProx(mu=0.1), dp_sgd=dp_sgd)
    with pytest.raises(sy.ConfigurationError, match="DPSGD"):
        FederatedTrainer(model, data, dp_sgd=(1.0, 1.0))
    with pytest.raises(sy.ConfigurationError, match="max_grad_norm"):
        DPSGD(1.0, 0.0)


# ---------------------------------------------------------------------- the demo


def test_the_federated_demo_with_dp_prints_epsilon_per_round():
    result = CliRunner().invoke(cli, ["demo", "federated", "--dp", "--rounds", "3",
                                      "--workers", "4", "--target-epsilon", "8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == ("digits: 4 memory workers, fast way, iid split, private data "
                        "(release policy allow)")  # fmt: skip
    rounds = [line for line in lines if line.startswith("round ")]
    assert [line.split("epsilon")[1].split()[0] for line in rounds] == ["4.729", "7.077"]
    assert lines[-3].startswith("stopped: round 3 would bring epsilon to 9.01")
    assert lines[-2] == "the owners' logs: 8 release events"
    assert lines[-1].startswith("final accuracy") and lines[-1].endswith("after 2 rounds")
    shm = CliRunner().invoke(cli, ["demo", "federated", "--dp", "--transport", "shm"])
    assert shm.exit_code == 1 and "'memory' or 'tcp'" in shm.output
