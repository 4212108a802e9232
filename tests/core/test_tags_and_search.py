"""Tags and descriptions travel with sent tensors; ``worker.search`` finds tagged objects."""

from __future__ import annotations

import pytest
import torch

import bastion as sy


def test_tagged_tensors_carry_their_tags_when_sent(m1, hook):
    x = torch.tensor([1, 2, 3]).tag("#digits", "#train").describe("three digits")
    assert x.tag("#train") is x and x.tags == ("#digits", "#train")
    assert x.description == "three digits" and torch.tensor([1]).tags == ()
    pointer = x.send(m1)
    assert pointer.tags == ("#digits", "#train") and pointer.description == "three digits"
    found = m1.search("#digits")
    assert len(found) == 1 and found[0].id_at_location == pointer.id_at_location
    assert found[0].tags == ("#digits", "#train") and found[0].description == "three digits"
    assert torch.equal(found[0].get(), x)


def test_every_tag_must_match(m1):
    a = m1.send(torch.ones(1), tags=["#digits", "#train"])
    b = m1.send(torch.ones(2), tags=["#digits", "#test"])
    m1.send(torch.ones(3))  # untagged: never found
    ids = lambda found: [p.id_at_location for p in found]  # noqa: E731
    assert ids(m1.search("#digits")) == [a.id_at_location, b.id_at_location]
    assert ids(m1.search("#digits", "#test")) == [b.id_at_location]
    assert ids(m1.search(["#digits", "#train"])) == [a.id_at_location]  # a list works too
    assert m1.search("#train", "#test") == [] and m1.search("#nothing") == []


def test_pointers_can_be_tagged_and_described_on_the_worker(m1):
    pointer = m1.send(torch.zeros(2))
    assert m1.search("#later") == []
    assert pointer.tag("#later").describe("tagged afterwards") is pointer
    found = m1.search("#later")
    assert found[0].description == "tagged afterwards" and pointer.tags == ("#later",)
    result = pointer + 1  # a new object: untagged
    result.tag("#sum")
    assert [p.id_at_location for p in m1.search("#sum")] == [result.id_at_location]


def test_search_results_never_delete_the_owners_data(m1):
    sent = m1.send(torch.ones(4), tags=["#kept"])
    for _ in range(3):
        found = m1.search("#kept")
        del found
    m1._flush_deletes()
    assert len(m1._objects) == 1 and len(m1.search("#kept")) == 1
    del sent  # the pointer from send does delete the data, as any pointer from send
    assert len(m1._objects) == 0


def test_tags_follow_a_move_and_leave_with_get_and_clear(m1, m2):
    pointer = m1.send(torch.ones(2), tags=["#moving"], description="on the road")
    pointer.move(m2)
    assert m1.search("#moving") == []
    found = m2.search("#moving")
    assert len(found) == 1 and found[0].description == "on the road"
    pointer.get()
    assert m2.search("#moving") == []
    m1.send(torch.ones(1), tags=["#gone"])
    m1.clear_objects()
    assert m1.search("#gone") == []


def test_the_create_event_records_tags_and_description(m1):
    m1.send(torch.ones(1), tags=["#audit"], description="who said what")
    event = m1.audit.events(kind="create")[-1]
    assert event.detail == {"tags": ["#audit"], "description": "who said what"}


@pytest.mark.parametrize("tags", [[""], [" #pad"], [3], ["x" * 300], [f"#{i}" for i in range(65)]])
def test_bad_tags_are_refused_before_anything_is_stored(m1, tags):
    with pytest.raises(sy.ConfigurationError, match="tag"):
        m1.send(torch.ones(1), tags=tags)
    assert len(m1._objects) == 0
    assert m1.send(torch.ones(1), tags=["#fine"]).get().item() == 1.0  # still serving


def test_bad_descriptions_and_empty_searches_are_refused(m1, hook):
    with pytest.raises(sy.ConfigurationError, match="description"):
        m1.send(torch.ones(1), description=7)
    with pytest.raises(sy.ConfigurationError, match="description"):
        torch.ones(1).describe("x" * 70000)
    with pytest.raises(sy.ConfigurationError, match="at least one tag"):
        m1.search()
    assert len(m1._objects) == 0


def test_tags_come_back_with_a_worker_restarted_on_its_log(tmp_path, hook):
    db = str(tmp_path / "owner.db")
    with sy.VirtualWorker(hook, id="tag-owner", db=db) as owner:
        sent = owner.send(torch.arange(3), tags=["#digits"], description="three")
        sent.garbage_collect_data = False
        sent.tag("#train")
        later = owner.send(torch.ones(2))
        later.garbage_collect_data = False
        later.describe("described afterwards")
    with sy.VirtualWorker(hook, id="tag-owner", db=db) as owner:
        assert [e.op for e in owner.audit.events(kind="create")] == [None, "tag", None, "tag"]
        found = owner.search("#digits", "#train")
        assert len(found) == 1 and found[0].description == "three"
        assert torch.equal(found[0].copy().get(), torch.arange(3))
        assert owner._worker._described(later.id_at_location) == ((), "described afterwards")
