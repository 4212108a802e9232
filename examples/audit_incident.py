"""The incident walked through in docs/audit.md: raw records leave the hospital's worker.

Run it in an empty folder: ``python examples/audit_incident.py``. It writes ``incident.db``
(the logs of the workers ``hospital`` and ``lab``), then edits one row with plain SQL, as
someone covering their tracks would. Then audit it: ``bastion audit stats incident.db``...
"""

from __future__ import annotations

import os
import sqlite3
import sys

import torch

import bastion as sy

DB = "incident.db"


def main() -> None:
    if os.path.exists(DB):
        sys.exit(f"{DB} exists already: run this in an empty folder")
    hook = sy.TorchHook(torch)
    hospital = sy.VirtualWorker(hook, id="hospital", db=DB)
    lab = sy.VirtualWorker(hook, id="lab", db=DB)

    # age, sex, systolic blood pressure of three patients; and a risk model's weights
    records = torch.tensor([[63.0, 1.0, 140.0], [71.0, 0.0, 155.0], [58.0, 1.0, 128.0]])
    records = records.send(hospital)
    weights = torch.tensor([0.02, 0.5, 0.01]).send(hospital)
    risk = (records * weights).sum(dim=1)
    print("mean risk (an aggregate: allowed to leave):", risk.mean().get())

    copy = records + 0  # a copy of the raw records...
    copy.move(lab)  # ...sent to the lab's worker...
    print("rows fetched from the lab:", len(copy.get()))  # ...and fetched from there
    hospital.clear_objects()
    hospital.close()
    lab.close()
    print("records were object", records.id_at_location)

    # Someone edits the log so that the fetch looks like it went back to the hospital.
    with sqlite3.connect(DB) as conn:
        conn.execute("update bastion_events set peer = 'hospital' "
                     "where worker_id = 'lab' and kind = 'get'")  # fmt: skip


if __name__ == "__main__":
    main()
