"""Property: after any sequence of send / op / in-place op / get / move / delete / clear,
replaying the log up to each step gives exactly the live store at that step (same ids,
bitwise-equal tensors)."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bastion as sy
from bastion.stores import replay

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "op", "inplace", "get", "move", "back", "delete",
                         "clear"]),  # fmt: skip
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=25,
)


def _bits(store: dict) -> dict[int, tuple]:
    return {
        oid: (value.dtype, tuple(value.shape), value.contiguous().reshape(-1).view(torch.uint8)
              .tolist())  # fmt: skip
        for oid, value in store.items()
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_replay_at_every_step_equals_the_live_store(steps):
    folder = Path(tempfile.mkdtemp())
    db = str(folder / "shared.db")
    # Snapshots every 7 events: replays start from them as well as from the beginning.
    m1 = sy.VirtualWorker(id="P1", db=db, snapshot_every=7)
    m2 = sy.VirtualWorker(id="P2", db=db, snapshot_every=7)
    here: list = []  # pointers on m1
    there: list = []  # pointers on m2
    seen: list[tuple[int, dict]] = []
    try:
        for action, n in steps:
            if action == "send":
                dtype = (torch.float32, torch.int64, torch.float64)[n % 3]
                here.append(m1.send((torch.arange(n % 7 + 1) * (n + 1)).to(dtype)))
            elif action == "op" and here:
                a, b = here[n % len(here)], here[(n // 7) % len(here)]
                here.append(a * 2 + b.to(a.dtype) if a.shape == b.shape else a - 1)
            elif action == "inplace" and here:
                here[n % len(here)].add_(3)
            elif action == "get" and here:
                here.pop(n % len(here)).get()
            elif action == "move" and here:
                there.append(here.pop(n % len(here)).move(m2))
            elif action == "back" and there:
                here.append(there.pop(n % len(there)).move(m1))
            elif action == "delete" and here:
                del here[n % len(here)]
                gc.collect()
            elif action == "clear":
                m1.clear_objects()
                here.clear()
            live = m1._objects  # sends pending deletes first
            seen.append((m1.audit.last_seq, _bits(live)))
        m1.audit.flush()  # batched: what another reader sees is what was committed
        for seq, expected in seen:
            if seq == 0:
                assert expected == {}
                continue
            assert _bits(replay(db, "P1", until=seq)) == expected
        assert _bits(m1.audit.replay()) == seen[-1][1]
    finally:
        m1.close()
        m2.close()
