"""Payload digests cover the logical value: dtype, shape and bytes, whatever the layout."""

from __future__ import annotations

import pytest
import torch

from bastion.events import payload_digest, tensor_bytes


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch._neg_view(torch.tensor([1.0, 2.0])),
        lambda: torch.tensor([1 + 2j, 3 - 1j]).conj(),
        lambda: torch.tensor([1 + 2j]).conj().imag,
        lambda: torch.ones(1, 2, dtype=torch.bfloat16)[..., ::2],
        lambda: torch.ones(1, 2, dtype=torch.complex64)[..., ::2],
        lambda: torch.arange(12.0).reshape(3, 4).T,
        lambda: torch.tensor([1.0, 2.0], requires_grad=True) * 3,
        lambda: torch.tensor(5, dtype=torch.int16),
    ],
)
def test_digest_equals_that_of_a_dense_copy(make):
    tensor = make()
    dense = tensor.detach().resolve_conj().resolve_neg().clone(
        memory_format=torch.contiguous_format
    )
    assert bytes(tensor_bytes(tensor)) == bytes(tensor_bytes(dense))
    assert payload_digest(tensor) == payload_digest(dense)


def test_digest_separates_dtype_shape_and_content():
    base = torch.tensor([1, 2, 3, 4], dtype=torch.int32)
    digests = {
        payload_digest(base),
        payload_digest(base.to(torch.int64)),
        payload_digest(base.reshape(2, 2)),
        payload_digest(base + 1),
        payload_digest(torch.zeros(0)),
        payload_digest([1, 2, 3, 4]),
    }
    assert len(digests) == 6
