"""``FederatedTrainer``: rounds of local training on the workers and aggregation here.

Each round sends the global model's state to every worker holding data, lets it train
(``style="fast"``: one shipped function call per worker, one round trip; ``style="pointers"``:
the PySyft loop through pointers), and combines the updates with the ``Strategy``. A worker
that fails or does not answer within ``timeout`` is left out of that round with a warning;
fewer than ``min_workers`` answers stop the training with ``FederatedError``.

>>> import torch, bastion as sy
>>> from bastion.federated import FedAvg, FederatedTrainer
>>> workers = [sy.VirtualWorker(id=f"doc-tr-{i}", allow_code=True) for i in range(2)]
>>> x = torch.randn(40, 4)
>>> fd = sy.BaseDataset(x, (x.sum(1) > 0).long()).federate(workers)
>>> trainer = FederatedTrainer(torch.nn.Linear(4, 2), fd, FedAvg(), rounds=3, lr=0.5)
>>> history = trainer.fit()
>>> len(history), history[-1].workers
(3, ('doc-tr-0', 'doc-tr-1'))
>>> history[-1].loss < history[0].loss
True
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import cloudpickle
import torch
import torch.nn as nn
import torch.nn.functional as F

from bastion.client import BaseWorker
from bastion.errors import BastionError, ConfigurationError
from bastion.federated.datasets import BaseDataset, FederatedDataset
from bastion.federated.privacy import DPSGD, DPFedAvg, PrivacyBudgetSpent
from bastion.federated.strategies import ClientUpdate, FedAvg, State, Strategy
from bastion.federated.training import (
    LocalTraining,
    LossFn,
    OptimizerFactory,
    default_optimizer,
    train_with_pointers,
)
from bastion.logs import get_logger
from bastion.pointer import PointerTensor
from bastion.privacy import Accountant

__all__ = ["FederatedError", "FederatedTrainer", "History", "RoundMetrics", "WorkerDropped"]

log = get_logger("bastion.federated")


class FederatedError(BastionError):
    """A federated round could not go on (too few workers answered, ...)."""


class WorkerDropped(UserWarning):
    """A worker failed or timed out in a round and was left out of it."""


@dataclass(frozen=True)
class RoundMetrics:
    """What one round did.

    ``loss``: the clients' mean training loss, weighted by samples. ``accuracy`` and
    ``eval_loss``: the new global model on ``eval_data`` (None without it).
    ``train_accuracy``: the clients' accuracy on the batches they trained on, measured only
    without ``eval_data`` (where it is the only accuracy) and for classifiers. Bytes: the
    tensor payload sent to and received from the workers (and the shipped function).

    Under differential privacy only updates leave the workers: ``loss`` is NaN (the loss on
    private data would leave without noise). ``epsilon`` at ``delta`` is what a ``DPFedAvg``
    strategy has spent after this round (each client's data the unit), ``record_epsilon``
    what ``DPSGD`` has spent on the worker that spent most (each record the unit, at
    ``DPSGD.delta``); None without them.
    """

    round: int
    loss: float
    accuracy: float | None
    eval_loss: float | None
    train_accuracy: float | None
    bytes_sent: int
    bytes_received: int
    seconds: float
    workers: tuple[str, ...]
    dropped: tuple[str, ...]
    epsilon: float | None = None
    delta: float | None = None
    record_epsilon: float | None = None


class History:
    """The rounds so far, oldest first: ``history[-1].accuracy``, ``history.as_dict()``.

    ``as_dict()`` gives one list per metric, ready to plot or to load in a DataFrame.
    """

    def __init__(self) -> None:
        self.rounds: list[RoundMetrics] = []

    def append(self, metrics: RoundMetrics) -> None:
        """Add a round's metrics."""
        self.rounds.append(metrics)

    def as_dict(self) -> dict[str, list[Any]]:
        """``{"round": [...], "loss": [...], "accuracy": [...], ...}``."""
        return {f.name: [getattr(r, f.name) for r in self.rounds] for f in fields(RoundMetrics)}

    def __getitem__(self, index: int) -> RoundMetrics:
        return self.rounds[index]

    def __len__(self) -> int:
        return len(self.rounds)

    def __iter__(self) -> Iterator[RoundMetrics]:
        return iter(self.rounds)

    def __repr__(self) -> str:
        if not self.rounds:
            return "<History: no rounds>"
        last = self.rounds[-1]
        accuracy = "" if last.accuracy is None else f" accuracy={last.accuracy:.4f}"
        return f"<History: {len(self)} rounds, last loss={last.loss:.4f}{accuracy}>"


def _nbytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _check_privacy(strategy: Strategy, dp_sgd: DPSGD | None, style: str) -> None:
    if isinstance(strategy, DPFedAvg) and strategy.side == "client" and style != "fast":
        raise ConfigurationError(
            "DPFedAvg(side='client') needs style='fast': the noise must be added on the "
            "worker, before the update leaves it (the pointer way brings the model back first)"
        )
    if dp_sgd is None:
        return
    if not isinstance(dp_sgd, DPSGD):
        raise ConfigurationError(f"dp_sgd is a DPSGD(noise_multiplier, max_grad_norm), "
                                 f"not {dp_sgd!r}")  # fmt: skip
    if style != "fast":
        raise ConfigurationError("DP-SGD runs on the workers: use style='fast'")
    inner = strategy.strategy if isinstance(strategy, DPFedAvg) else strategy
    if type(inner).local_penalty is not Strategy.local_penalty and getattr(inner, "mu", 0):
        raise ConfigurationError(
            f"DP-SGD trains without a local penalty ({inner.name}'s term would bypass the "
            "per-example clipping); use FedAvg or FedAdam"
        )


class FederatedTrainer:
    """Train ``model`` by federated rounds over the data on ``workers``.

    ``workers`` is a ``FederatedDataset``, or workers whose data is found with
    ``FederatedDataset.search(workers, *tags)``. Each round every worker trains
    ``local_epochs`` over its data in batches of ``batch_size`` with ``optimizer`` (a
    factory of parameters; default SGD at ``lr``) on ``loss_fn``, then ``strategy`` (default
    ``FedAvg()``) makes the next global model, which is loaded into ``model`` in place.

    - ``style``: ``"fast"`` ships the training to each worker as one function call (the
      worker needs ``allow_code=True``); ``"pointers"`` drives it remotely, op by op.
    - ``eval_data``: ``(inputs, targets)`` here, to measure the global model each round.
    - ``min_workers``, ``timeout`` (seconds per round): see the module's docstring.
      ``parallel`` trains the workers in threads (default: when any is out of process);
      a timeout is only enforced then.
    - ``progress``: a progress bar (rich) on standard error (default: when it is a terminal).
    - ``seed``: fixes each worker's batch order in each round.
    - Privacy: a ``DPFedAvg`` strategy (client-level DP) and ``dp_sgd=DPSGD(...)``
      (record-level DP-SGD on the workers); ``fit`` stops before a round that would pass
      their ``target_epsilon`` (``stopped`` says why). Workers holding private data are
      asked their release policy at the first round: ``deny`` stops the training
      (``FederatedError``); ``DP`` (the worker noises what leaves) needs
      ``DPFedAvg(side="client")`` with the same noise multiplier and clip.
    """

    def __init__(
        self,
        model: nn.Module,
        workers: FederatedDataset | Sequence[BaseWorker],
        strategy: Strategy | None = None,
        rounds: int = 10,
        local_epochs: int = 1,
        *,
        batch_size: int = 32,
        lr: float = 0.01,
        optimizer: OptimizerFactory | None = None,
        loss_fn: LossFn = F.cross_entropy,
        style: str = "fast",
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        tags: Sequence[str] = (),
        min_workers: int = 1,
        timeout: float | None = None,
        parallel: bool | None = None,
        progress: bool | None = None,
        seed: int = 0,
        dp_sgd: DPSGD | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigurationError(f"the model is an nn.Module, got {type(model).__name__}")
        if any(isinstance(p, PointerTensor) for p in model.parameters()):
            raise ConfigurationError("the model is on a worker; bring it back with model.get()")
        if style not in ("fast", "pointers"):
            raise ConfigurationError(f"style is 'fast' or 'pointers', not {style!r}")
        for label, value in (("rounds", rounds), ("local_epochs", local_epochs),
                             ("batch_size", batch_size), ("min_workers", min_workers)):  # fmt: skip
            if not isinstance(value, int) or value < (0 if label == "rounds" else 1):
                raise ConfigurationError(f"{label} must be a positive int, got {value!r}")
        strategy = strategy if strategy is not None else FedAvg()
        _check_privacy(strategy, dp_sgd, style)
        if isinstance(workers, FederatedDataset):
            data = workers
        else:
            if not tags:
                raise ConfigurationError(
                    "give a FederatedDataset, or workers and the tags of their data "
                    "(tags=['#digits'])"
                )
            data = FederatedDataset.search(list(workers), *tags)
        self.model = model
        self.data = data
        self.strategy = strategy
        self.dp_sgd = dp_sgd
        #: only updates leave the workers (no loss or counts)
        self.private = isinstance(strategy, DPFedAvg) or dp_sgd is not None
        #: why ``fit`` stopped early (a privacy budget), or None
        self.stopped: str | None = None
        self.rounds = rounds
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer or default_optimizer(lr)
        self.loss_fn = loss_fn
        self.style = style
        self.eval_data = eval_data
        self.min_workers = min_workers
        self.timeout = timeout
        if parallel is None:
            parallel = any(not w.address.startswith("memory://") for w in data.locations.values())
        self.parallel = parallel
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.seed = seed
        self.history = History()
        self._code: bytes | None = None
        self._training: LocalTraining | None = None
        self._flat_global: dict[str, torch.Tensor] = {}
        self._pool: futures.ThreadPoolExecutor | None = None
        self._busy: dict[str, futures.Future] = {}
        #: per worker (once known): whether its release policy adds the DP noise itself
        self._noised: dict[str, bool] = {}
        self._record_accountants: dict[str, Accountant] = {}

    # ------------------------------------------------------------------ running

    def fit(self, rounds: int | None = None) -> History:
        """Run ``rounds`` more rounds (default: those given at construction); the history."""
        rounds = self.rounds if rounds is None else rounds
        if not self.progress:
            for _ in range(rounds):
                try:
                    self.round()
                except PrivacyBudgetSpent as exc:
                    self._stop(exc)
                    break
            return self.history
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[shown]}"))  # fmt: skip
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task(f"{self.strategy.name} ({self.style})", total=rounds, shown="")
            for _ in range(rounds):
                try:
                    metrics = self.round()
                except PrivacyBudgetSpent as exc:
                    self._stop(exc)
                    break
                shown = "" if math.isnan(metrics.loss) else f"loss {metrics.loss:.4f}"
                if metrics.accuracy is not None:
                    shown += f"  accuracy {metrics.accuracy:.4f}"
                if metrics.epsilon is not None:
                    shown += f"  epsilon {metrics.epsilon:.3g}"
                bar.update(task, advance=1, shown=shown.strip())
        return self.history

    def _stop(self, exc: PrivacyBudgetSpent) -> None:
        self.stopped = str(exc)
        log.warning("training stopped: privacy budget", why=self.stopped,
                    rounds=len(self.history))  # fmt: skip

    def round(self) -> RoundMetrics:
        """Run one round and return its metrics (also appended to ``history``)."""
        number = len(self.history) + 1
        start = time.perf_counter()
        global_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.style == "fast":  # packed once for every worker
            self._shipped()
            self._flat_global = self._training.layout.flatten(global_state)
        jobs = self._jobs(number)
        self.strategy.begin_round(number, list(jobs))  # may refuse: past the budget
        self._check_record_budget(number)
        updates, dropped = self._collect(number, jobs)
        if len(updates) < self.min_workers:
            raise FederatedError(
                f"round {number}: {len(updates)} of {len(jobs)} workers "
                f"answered, fewer than min_workers={self.min_workers}; the model is unchanged"
            )
        new_state = self.strategy.aggregate(global_state, updates)
        self.model.load_state_dict(new_state)
        self._account_records(updates)
        metrics = self._metrics(number, updates, dropped, global_state, start)
        self.history.append(metrics)
        log.info("round done", round=number, loss=metrics.loss, accuracy=metrics.accuracy,
                 epsilon=metrics.epsilon, workers=len(updates), dropped=len(dropped))  # fmt: skip
        return metrics

    def close(self) -> None:
        """Stop the threads of parallel training (a hung worker's thread is left to end)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------ one worker

    def _job(self, number: int, index: int, dataset: BaseDataset) -> tuple[State, dict[str, float]]:
        seed = self.seed * 1_000_003 + number * 1009 + index
        worker = dataset.location
        noised = self._noised.get(worker.id)
        if noised is None:  # the first time: under which release policy may updates leave?
            noised = self._noised[worker.id] = self._release_policy(worker)
        if self.style == "fast":
            code = self._shipped()
            reply = worker.call(code, dataset.data, dataset.targets, self._flat_global, seed,
                                noise=not noised)  # fmt: skip
            if self.private:  # the update alone left the worker
                reply = (reply, {"samples": len(dataset)})
            flat, metrics = reply
            return self._training.layout.unflatten(flat), metrics
        with torch.enable_grad():
            return self._pointer_job(dataset, seed)

    def _pointer_job(self, dataset: BaseDataset, seed: int) -> tuple[State, dict[str, float]]:
        return train_with_pointers(
            self.model, dataset.data, dataset.targets, self.strategy,
            batch_size=self.batch_size, epochs=self.local_epochs, loss_fn=self.loss_fn,
            optimizer=self.optimizer, seed=seed, accuracy=self.eval_data is None,
        )  # fmt: skip

    def _shipped(self) -> bytes:
        """The training function, pickled once for all rounds and workers."""
        if self._code is None:
            self._training = LocalTraining(
                self.model, self.strategy, batch_size=self.batch_size, epochs=self.local_epochs,
                loss_fn=self.loss_fn, optimizer=self.optimizer, accuracy=self.eval_data is None,
                private=self.private, dp_sgd=self.dp_sgd,
            )  # fmt: skip
            self._code = cloudpickle.dumps(self._training)
        return self._code

    # ------------------------------------------------------------------ privacy

    def _release_policy(self, worker: BaseWorker) -> bool:
        """Ask ``worker`` under which release policy an update would leave it: True when it
        adds the DP noise itself. What cannot work raises (the worker is left out): ``deny``,
        and ``dp`` without a client-side ``DPFedAvg`` of the same noise multiplier and clip."""
        policy = worker.privacy_budget().policy
        kind = None if policy is None else policy.get("kind")
        if kind in (None, "allow"):
            return False
        if kind != "dp":
            raise FederatedError(
                f"worker {worker.id} holds private data and its release policy is {kind}: no "
                "update may leave it. Its owner decides: allow updates to leave (each release "
                "audited) or require differential privacy"
            )
        strategy = self.strategy
        if not (isinstance(strategy, DPFedAvg) and strategy.side == "client"
                and strategy.noise_multiplier == policy["noise_multiplier"]
                and strategy.clip == policy["clip"]) or self.style != "fast":  # fmt: skip
            raise FederatedError(
                f"worker {worker.id} releases updates only with differential-privacy noise of "
                f"its own; train with DPFedAvg(noise_multiplier={policy['noise_multiplier']:g}, "
                f"clip={policy['clip']:g}, side='client') the fast way, so that each update "
                "leaves once, noised, and the epsilon is accounted as the worker does"
            )
        return True

    def _check_record_budget(self, number: int) -> None:
        dp = self.dp_sgd
        if dp is None or dp.target_epsilon is None:
            return
        for worker_id, size in self.data.sizes.items():
            rate, steps = dp.steps(size, self.batch_size, self.local_epochs)
            accountant = self._record_accountants.get(worker_id, Accountant())
            after = accountant.epsilon_after(
                noise_multiplier=dp.noise_multiplier, sample_rate=rate, steps=steps,
                delta=dp.delta,
            )
            if after > dp.target_epsilon:
                raise PrivacyBudgetSpent(
                    f"round {number} of DP-SGD would bring worker {worker_id}'s epsilon to "
                    f"{after:.4g}, past the target {dp.target_epsilon:g} (delta {dp.delta:g}); "
                    "the model keeps the last round's weights"
                )

    def _account_records(self, updates: list[ClientUpdate]) -> None:
        dp = self.dp_sgd
        if dp is None:
            return
        for update in updates:
            rate, steps = dp.steps(self.data.sizes[update.worker], self.batch_size,
                                   self.local_epochs)  # fmt: skip
            self._record_accountants.setdefault(update.worker, Accountant()).step(
                noise_multiplier=dp.noise_multiplier, sample_rate=rate, steps=steps
            )

    def _jobs(self, number: int) -> dict[str, Callable[[], Any]]:
        return {
            worker: (lambda i=i, ds=ds: self._job(number, i, ds))
            for i, (worker, ds) in enumerate(self.data.datasets.items())
        }

    def _collect(
        self, number: int, jobs: dict[str, Callable[[], Any]]
    ) -> tuple[list[ClientUpdate], dict[str, str]]:
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        if not self.parallel:
            for worker, job in jobs.items():
                try:
                    results[worker] = job()
                except Exception as exc:  # left out of the round; see the warning
                    errors[worker] = f"{type(exc).__name__}: {exc}"
        else:
            if self._pool is None:
                self._pool = futures.ThreadPoolExecutor(len(jobs) + 1, "bastion-fl")
            running = {}
            for worker, job in jobs.items():
                busy = self._busy.get(worker)
                if busy is not None and not busy.done():
                    errors[worker] = "still busy with an earlier round"
                    continue
                running[worker] = self._busy[worker] = self._pool.submit(job)
            done, _ = futures.wait(running.values(), timeout=self.timeout)
            for worker, future in running.items():
                if future not in done:
                    errors[worker] = f"no answer within timeout={self.timeout} s"
                elif future.exception() is not None:
                    exc = future.exception()
                    errors[worker] = f"{type(exc).__name__}: {exc}"
                else:
                    results[worker] = future.result()
        for worker, why in errors.items():
            log.warning("worker left out of round", round=number, worker=worker, why=why)
            warnings.warn(f"round {number}: worker {worker} left out ({why})", WorkerDropped,
                          stacklevel=4)  # fmt: skip
        updates = [
            ClientUpdate(worker, delta, int(metrics["samples"]), metrics)
            for worker, (delta, metrics) in results.items()
        ]
        return updates, errors

    # ------------------------------------------------------------------ metrics

    def _metrics(self, number: int, updates: list[ClientUpdate], dropped: dict[str, str],
                 global_state: State, start: float) -> RoundMetrics:  # fmt: skip
        seen = sum(u.metrics.get("seen", 0) for u in updates)
        loss = sum(u.metrics["loss"] * u.metrics["seen"] for u in updates) / seen if seen \
            else math.nan  # fmt: skip
        train_accuracy = None
        if seen and all("correct" in u.metrics for u in updates):
            train_accuracy = sum(u.metrics["correct"] for u in updates) / max(seen, 1)
        accuracy = eval_loss = None
        if self.eval_data is not None:
            eval_loss, accuracy = self.evaluate(*self.eval_data)
        state_bytes = _nbytes(global_state)
        if self.style == "fast":
            sent = (state_bytes + len(self._shipped())) * len(updates)
        else:  # the model, and the batch indices
            sent = state_bytes * len(updates) + 8 * seen
        received = sum(_nbytes(u.delta) for u in updates)
        if self.style == "pointers":  # weights and gradients come back with the model
            received *= 2
        spent = self.strategy.privacy_spent()
        record_epsilon = None
        if self.dp_sgd is not None:
            spent_by = [a.epsilon(self.dp_sgd.delta) for a in self._record_accountants.values()]
            record_epsilon = max(spent_by, default=0.0)
        return RoundMetrics(
            round=number, loss=loss, accuracy=accuracy, eval_loss=eval_loss,
            train_accuracy=train_accuracy, bytes_sent=sent, bytes_received=received,
            seconds=time.perf_counter() - start, workers=tuple(u.worker for u in updates),
            dropped=tuple(dropped), epsilon=None if spent is None else spent[0],
            delta=None if spent is None else spent[1], record_epsilon=record_epsilon,
        )  # fmt: skip

    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float | None]:
        """``(loss, accuracy)`` of the global model on local data (accuracy for classifiers)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                output = self.model(inputs)
                loss = float(self.loss_fn(output, targets))
                correct = None
                if output.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
                    correct = int((output.argmax(1) == targets).sum())
        finally:
            self.model.train(was_training)
        accuracy = None if correct is None else correct / max(len(targets), 1)
        return loss, accuracy

    def __enter__(self) -> FederatedTrainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<FederatedTrainer {self.strategy!r} style={self.style} on "
            f"{len(self.data.workers)} workers, {len(self.history)} rounds done>"
        )
