"""PATE analysis: PySyft 0.2's own case, and the properties the bounds must have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bastion as sy
from bastion.federated.pate import perform_analysis, vote_counts


def pysyft_case() -> tuple[np.ndarray, np.ndarray]:
    """numpy seed 0; 100 teachers x 50 examples x 10 labels; the first 10 examples unanimous."""
    rng = np.random.RandomState(0)
    preds = (rng.rand(100, 50) * 10).astype(int)
    indices = (rng.rand(50) * 10).astype(int)
    preds[:, 0:10] *= 0
    return preds, indices


def test_pysyft_case_data_dependent_is_below_data_independent():
    preds, indices = pysyft_case()
    dependent, independent = perform_analysis(preds, indices, noise_eps=0.1, delta=1e-5)
    assert 0 < dependent < independent


def test_torch_tensors_give_the_same_analysis():
    preds, indices = pysyft_case()
    assert perform_analysis(torch.from_numpy(preds), torch.from_numpy(indices), 0.1) == (
        perform_analysis(preds, indices, 0.1)
    )


def test_consensus_lowers_the_data_dependent_bound_only():
    rng = np.random.RandomState(1)
    preds = (rng.rand(100, 40) * 10).astype(int)
    queries = np.arange(40)
    noisy = perform_analysis(preds, queries, noise_eps=0.05)
    assert noisy.data_dependent == pytest.approx(noisy.data_independent)  # no consensus
    preds[:, :30] = 3
    agreed = perform_analysis(preds, queries, noise_eps=0.05)
    assert agreed.data_independent == noisy.data_independent
    assert agreed.data_dependent < 0.9 * noisy.data_dependent


def test_more_answers_cost_more():
    preds, _ = pysyft_case()
    few = perform_analysis(preds, np.arange(10, 20), noise_eps=0.1)
    many = perform_analysis(preds, np.arange(10, 50), noise_eps=0.1)
    assert many.data_independent > few.data_independent
    assert many.data_dependent > few.data_dependent


@settings(max_examples=30, deadline=None)
@given(
    teachers=st.integers(1, 30), examples=st.integers(1, 20), labels=st.integers(2, 6),
    noise_eps=st.floats(0.01, 2.0), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_the_data_dependent_bound_never_exceeds_the_other(teachers, examples, labels,
                                                           noise_eps, seed):  # fmt: skip
    rng = np.random.RandomState(seed)
    preds = rng.randint(0, labels, size=(teachers, examples))
    indices = rng.randint(0, examples, size=examples)
    dependent, independent = perform_analysis(preds, indices, noise_eps, num_labels=labels)
    assert 0 < dependent <= independent


def test_vote_counts_and_bad_input():
    counts = vote_counts(np.array([[0, 2, 2], [1, 2, 0]]), num_labels=4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 0, 2, 0], [1, 0, 1, 0]]
    with pytest.raises(sy.ConfigurationError, match="2-D"):
        perform_analysis(np.zeros(5, dtype=int), np.arange(2), 0.1)
    with pytest.raises(sy.ConfigurationError, match="out of range"):
        perform_analysis(np.zeros((3, 5), dtype=int), np.array([7]), 0.1)
    with pytest.raises(sy.ConfigurationError, match="noise_eps"):
        perform_analysis(np.zeros((3, 5), dtype=int), np.array([1]), 0.0)
    with pytest.raises(sy.ConfigurationError, match="label 3 of 2"):
        vote_counts(np.array([[3]]), num_labels=2)
