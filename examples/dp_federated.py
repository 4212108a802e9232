"""A DP federated run and its audit trail: the worked example of docs/privacy.md.

Run it in an empty folder: ``python examples/dp_federated.py``. Ten hospitals serve workers
over TCP (in this process, logging to ``hospital-N.db``), register their shards of the
digits private and allow clipped model updates to leave; a data scientist, connected as
``scientist``, trains with DP-FedAvg (noise on the aggregate) until a target epsilon.
Then ``bastion audit events hospital-0.db`` and ``bastion audit stats hospital-0.db`` show
what left hospital 0.

``python examples/dp_federated.py client``: the hospitals require differential privacy
instead (release policy ``DP``, a budget of epsilon 25 per peer); each adds the noise to the
update it releases and accounts for it; the scientist trains with the matching client-side
DP-FedAvg and reads what she spent.
"""

from __future__ import annotations

import sys

import bastion as sy
from bastion.federated import DPFedAvg, FederatedDataset, FederatedTrainer
from bastion.federated.digits import digits_model, load_digits_data, round_line, shards

KEY = "change-me-to-a-long-random-secret"
SIDE = sys.argv[1] if len(sys.argv) > 1 else "server"
if SIDE == "server":  # the owners allow clipped updates out; the server adds the noise
    POLICY, BUDGET = "allow", None
else:  # the owners require DP: each worker noises what leaves and keeps a budget per peer
    POLICY, BUDGET = sy.DP(noise_multiplier=1.0, clip=0.3), sy.Budget(epsilon=25.0, delta=1e-5)

# The hospitals: each holds its shard, private; updates leave only under the policy.
x_train, y_train, x_test, y_test = load_digits_data()
hospitals = []
for i, index in enumerate(shards(y_train, 10)):
    served = sy.serve("tcp://127.0.0.1:0", id=f"hospital-{i}", db=f"hospital-{i}.db",
                      authkey=KEY, allow_code=True)  # fmt: skip
    served.worker.register(x_train[index], tags=["#digits", "#data"])
    served.worker.register(y_train[index], tags=["#digits", "#target"])
    served.worker.set_release_policy(POLICY, budget=BUDGET)
    hospitals.append(served)

# The data scientist: finds the data by its tags, never sees it.
workers = [sy.connect(h.address, authkey=KEY, peer="scientist") for h in hospitals]
data = FederatedDataset.search(workers, "#digits")
strategy = DPFedAvg(noise_multiplier=1.0, clip=0.3, side=SIDE, target_epsilon=25.0)
trainer = FederatedTrainer(digits_model(0), data, strategy, rounds=20, batch_size=32, lr=0.1,
                           eval_data=(x_test, y_test))  # fmt: skip
history = trainer.fit()
for metrics in history:
    print(round_line(metrics))
print("stopped:", trainer.stopped)
print(workers[0].privacy_budget())  # what hospital 0 says the scientist spent there

for worker in workers:
    worker.close()
for served in hospitals:
    served.close()
