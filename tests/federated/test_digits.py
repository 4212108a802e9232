"""The digits example: bastion's FedAvg reaches plain PyTorch's accuracy, and the demo runs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bastion.cli import cli
from bastion.federated import digits


@pytest.mark.parametrize("split", ["iid", "label"])
def test_bastion_fedavg_agrees_with_plain_pytorch_fedavg(split):
    with digits.digits_workers(10, "memory") as workers:
        history = digits.run_digits(workers, rounds=20, split=split, seed=1)
    reference = digits.reference_fedavg(rounds=20, split=split, seed=1)
    assert len(history) == 20 and history[-1].accuracy > 0.9
    assert abs(history[-1].accuracy - reference[-1]) <= 0.02
    assert history.as_dict()["accuracy"] == pytest.approx(reference, abs=0.02)


def test_the_federated_demo_passes_ninety_percent_in_a_short_run():
    result = CliRunner().invoke(cli, ["demo", "federated", "--rounds", "8", "--workers", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("digits: 4 memory workers, fast way, iid split")
    assert sum(line.startswith("round ") for line in lines) == 8
    final = float(lines[-1].split()[2])
    assert lines[-1].startswith("final accuracy") and final > 0.9


def test_the_demo_refuses_an_unknown_transport():
    result = CliRunner().invoke(cli, ["demo", "federated", "--transport", "pigeon"])
    assert result.exit_code != 0 and "pigeon" in result.output
