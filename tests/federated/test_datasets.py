"""Datasets on workers: federate, shards, search by tags, and the pointer batch loader."""

from __future__ import annotations

import pytest
import torch

import bastion as sy
from bastion.federated import FederatedDataset, even_shards, iid_shards, label_shards


def _data(n: int = 10) -> sy.BaseDataset:
    return sy.BaseDataset(torch.arange(n * 2.0).reshape(n, 2), torch.arange(n))


def test_federate_sends_one_shard_to_each_worker(m1, m2):
    fd = _data(11).federate((m1, m2), tags=["#toy"], description="toy data")
    assert fd.workers == [m1.id, m2.id] and fd.sizes == {m1.id: 6, m2.id: 5} and len(fd) == 11
    first = fd[m1.id]
    assert first.location is m1 and isinstance(first.data, sy.PointerTensor)
    assert torch.equal(first.targets.copy().get(), torch.arange(6))
    assert len(m1._objects) == 2 and len(m2._objects) == 2
    assert first.data.tags == ("#toy", "#data") and first.targets.description == "toy data"
    assert "Distributed across" in repr(fd) and "11" in repr(fd)
    with pytest.raises(sy.ConfigurationError, match="no data on worker"):
        fd["nobody"]


def test_federated_dataset_search_finds_the_shards_by_tag(m1, m2, make_worker):
    fd = _data(8).federate((m1, m2), tags=["#toy"])
    empty = make_worker("empty")
    found = FederatedDataset.search((m1, empty, m2), "#toy")
    assert found.workers == [m1.id, m2.id] and found.sizes == fd.sizes
    assert torch.equal(found[m2.id].data.copy().get(), fd[m2.id].data.copy().get())
    with pytest.raises(sy.ConfigurationError, match="no worker"):
        FederatedDataset.search((m1, m2), "#other")
    second = _data(4).send(m1, tags=["#toy"])  # a second dataset under the same tags
    with pytest.raises(sy.ConfigurationError, match="2 data and 2 target"):
        FederatedDataset.search((m1,), "#toy")
    del second


def test_kept_shards_outlive_their_pointers(m1, m2):
    fd = _data(8).federate((m1, m2), tags=["#kept"], keep=True)
    assert fd[m1.id].data.garbage_collect_data is False
    del fd
    m1._flush_deletes()
    assert len(m1._objects) == 2
    assert FederatedDataset.search((m1, m2), "#kept").sizes == {m1.id: 4, m2.id: 4}
    dropped = _data(8).federate((m1, m2), tags=["#dropped"])
    del dropped
    m1._flush_deletes()
    assert len(m1._objects) == 2  # the default: collected pointers delete their shards


def test_shards_split_every_sample_once():
    targets = torch.arange(40) % 4
    for parts in (even_shards(40, 3), iid_shards(40, 3, seed=1), label_shards(targets, 4)):
        assert sorted(torch.cat(parts).tolist()) == list(range(40))
    assert [len(p) for p in even_shards(40, 3)] == [14, 13, 13]
    assert [p.tolist() for p in iid_shards(40, 3, 1)] == [p.tolist() for p in iid_shards(40, 3, 1)]
    assert [p.tolist() for p in iid_shards(40, 3, 1)] != [p.tolist() for p in iid_shards(40, 3, 2)]
    # non-IID: each worker sees two labels out of four
    assert all(len(set(targets[p].tolist())) == 2 for p in label_shards(targets, 4))
    with pytest.raises(sy.ConfigurationError, match="cannot split"):
        even_shards(2, 3)


def test_federate_with_given_shards(m1, m2):
    fd = _data(6).federate((m1, m2), shards=[torch.tensor([5, 0]), torch.tensor([1, 2, 3, 4])])
    assert fd.sizes == {m1.id: 2, m2.id: 4}
    assert fd[m1.id].targets.copy().get().tolist() == [5, 0]
    with pytest.raises(sy.ConfigurationError, match="one shard per worker"):
        _data(6).federate((m1, m2), shards=[torch.arange(6)])


def test_bad_datasets_are_refused(m1, m2):
    with pytest.raises(sy.ConfigurationError, match="as many targets"):
        sy.BaseDataset(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(sy.ConfigurationError, match="must be a tensor"):
        sy.BaseDataset([[1.0]], torch.zeros(1))
    with pytest.raises(sy.LocationError, match="one worker"):
        sy.BaseDataset(m1.send(torch.zeros(2, 1)), m2.send(torch.zeros(2)))
    with pytest.raises(sy.LocationError, match="on workers"):
        FederatedDataset([_data(2)])
    with pytest.raises(sy.ConfigurationError, match="at least one worker"):
        _data(2).federate(())


def test_a_dataset_comes_back_with_get(m1):
    local = _data(4)
    remote = local.send(m1)
    assert remote.location is m1 and len(remote) == 4
    back = remote.get()
    assert back.location is None and torch.equal(back.data, local.data)
    assert len(m1._objects) == 0


def test_the_loader_yields_pointer_batches_worker_by_worker(m1, m2):
    fd = _data(10).federate((m1, m2))
    loader = sy.FederatedDataLoader(fd, batch_size=2)
    batches = list(loader)
    assert len(loader) == len(batches) == 6
    assert [d.location.id for d, _ in batches] == [m1.id] * 3 + [m2.id] * 3
    assert [t.shape[0] for _, t in batches] == [2, 2, 1, 2, 2, 1]
    assert torch.cat([t.get() for _, t in batches]).tolist() == list(range(10))
    dropping = sy.FederatedDataLoader(fd, batch_size=2, drop_last=True)
    assert len(dropping) == len(list(dropping)) == 4


def test_the_loader_shuffles_reproducibly_and_anew_each_pass(m1, m2):
    fd = _data(10).federate((m1, m2))

    def passes(seed: int) -> list[list[int]]:
        loader = sy.FederatedDataLoader(fd, batch_size=3, shuffle=True, seed=seed)
        return [[v for _, t in loader for v in t.get().tolist()] for _ in range(2)]

    first, second = passes(0)
    assert sorted(first) == list(range(10)) and first != second  # a new order each pass
    assert sorted(first[:5]) == list(range(5))  # still worker by worker
    assert passes(0) == [first, second] and passes(1) != [first, second]


def test_the_loader_refuses_bad_arguments(m1):
    with pytest.raises(sy.ConfigurationError, match="FederatedDataset"):
        sy.FederatedDataLoader(_data(2))
    with pytest.raises(sy.ConfigurationError, match="batch_size"):
        sy.FederatedDataLoader(_data(2).federate([m1]), batch_size=0)
