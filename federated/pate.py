"""PATE privacy analysis: what answering a student's queries with a noisy vote of teachers
costs, data-dependent and data-independent (Papernot et al., ICLR 2017, section 3 and
appendix; the interface of PySyft 0.2's ``pate.perform_analysis``).

Each query is answered by the label with the most teacher votes after Laplace noise of scale
``1 / noise_eps`` is added to every count: a ``2 * noise_eps``-DP mechanism. Its privacy
loss is tracked with the moments accountant over ``moments`` orders. The data-independent
bound uses only that; the data-dependent bound also uses how strongly the teachers agreed on
each answered query (strong agreement makes the noisy answer almost certain, so it reveals
little), and is never larger.

>>> import numpy as np
>>> preds = np.zeros((50, 20), dtype=int)   # 50 teachers agree on label 0 for 20 examples
>>> preds[:5] = 1                            # ... save five of them
>>> analysis = perform_analysis(preds, indices=np.arange(20), noise_eps=0.1, delta=1e-5)
>>> analysis.data_dependent < analysis.data_independent
True
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from bastion.errors import ConfigurationError


class PateAnalysis(NamedTuple):
    """The epsilon (at the analysis' delta) of the answered queries, both ways."""

    data_dependent: float
    data_independent: float


def _as_int_array(value: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer) or (array < 0).any():
        raise ConfigurationError(
            f"{name} must be a {ndim}-D array of non-negative integers, got shape "
            f"{array.shape} of {array.dtype}"
        )
    return array.astype(np.int64, copy=False)


def vote_counts(teacher_preds: Any, num_labels: int | None = None) -> np.ndarray:
    """``(num_examples, num_labels)`` counts of the teachers' votes.

    >>> vote_counts(np.array([[0, 2], [0, 1], [1, 1]])).tolist()
    [[2, 1, 0], [0, 2, 1]]
    """
    preds = _as_int_array(teacher_preds, "teacher_preds", 2)
    labels = int(preds.max(initial=-1)) + 1 if num_labels is None else num_labels
    if preds.size and preds.max() >= labels:
        raise ConfigurationError(f"a teacher predicted label {preds.max()} of {labels} labels")
    examples = preds.shape[1]
    counts = np.zeros((examples, labels), dtype=np.int64)
    np.add.at(counts, (np.tile(np.arange(examples), preds.shape[0]), preds.reshape(-1)), 1)
    return counts


def _q_bound(counts: np.ndarray, noise_eps: float) -> np.ndarray:
    """Per query, a bound on the chance that the noisy answer is not the plurality label
    (Theorem 3): the sum over other labels of (2 + g) / (4 e^g), g = noise_eps * vote gap."""
    gaps = noise_eps * (counts.max(axis=1, keepdims=True) - counts)
    terms = (2.0 + gaps) / (4.0 * np.exp(gaps))
    winners = counts.argmax(axis=1)
    terms[np.arange(len(counts)), winners] = 0.0
    return np.minimum(terms.sum(axis=1), 1.0)


def _log_moments(q: np.ndarray, eps: float, orders: np.ndarray) -> np.ndarray:
    """Log moments, ``(len(q), len(orders))``, of an ``eps``-DP mechanism that errs with
    probability at most ``q`` (Theorem 2), never above the data-independent bound."""
    independent = np.minimum(0.5 * eps * eps * orders * (orders + 1), eps * orders)
    bound = np.broadcast_to(independent, (len(q), len(orders))).copy()
    usable = q < (math.exp(eps) - 1) / (math.exp(2 * eps) - 1)
    if usable.any():
        qs = q[usable][:, None]
        with np.errstate(divide="ignore"):
            dependent = np.log(
                (1 - qs) * ((1 - qs) / (1 - math.exp(eps) * qs)) ** orders
                + qs * np.exp(eps * orders)
            )
        bound[usable] = np.minimum(bound[usable], dependent)
    return bound


def perform_analysis(
    teacher_preds: Any,
    indices: Any,
    noise_eps: float,
    delta: float = 1e-5,
    moments: int = 8,
    num_labels: int | None = None,
) -> PateAnalysis:
    """Data-dependent and data-independent epsilon of answering the queries ``indices``.

    ``teacher_preds``: ``(num_teachers, num_examples)`` labels (numpy or torch);
    ``indices``: the examples whose noisy label was released, one entry per answer;
    ``noise_eps``: the inverse scale of the Laplace noise on each vote count; ``moments``:
    how many orders (1..moments) the moments accountant tries.
    """
    if not (noise_eps > 0 and 0 < delta < 1 and int(moments) >= 1):
        raise ConfigurationError(
            "perform_analysis needs noise_eps > 0, 0 < delta < 1 and moments >= 1"
        )
    counts = vote_counts(teacher_preds, num_labels)
    answered = _as_int_array(indices, "indices", 1)
    if answered.size and answered.max() >= len(counts):
        raise ConfigurationError(
            f"index {answered.max()} is out of range: the teachers labelled {len(counts)} examples"
        )
    orders = np.arange(1, int(moments) + 1, dtype=np.float64)
    eps = 2.0 * noise_eps
    log_delta = math.log(delta)
    dependent = _log_moments(_q_bound(counts[answered], noise_eps), eps, orders).sum(axis=0)
    independent = len(answered) * np.minimum(0.5 * eps * eps * orders * (orders + 1), eps * orders)
    data_independent = float(np.min((independent - log_delta) / orders))
    # min(): where no query had consensus, the two are equal up to rounding of the sums.
    data_dependent = min(float(np.min((dependent - log_delta) / orders)), data_independent)
    return PateAnalysis(data_dependent, data_independent)


__all__ = ["PateAnalysis", "perform_analysis", "vote_counts"]
