"""One client's part of a round, two ways: shipped to the worker as a function (fast), or
driven from here through pointers, PySyft style.

``LocalTraining`` is the function a worker runs: it gets the global state and the worker's
data, trains for some epochs and returns ``(update, metrics)``; only tensors of the model's
size cross the wire, packed into one flat tensor per dtype (``StateLayout``: a frame with
hundreds of small tensors costs far more to encode than one). It is pickled once per
trainer, holding the model's *structure* (its tensors on the meta device, no weights), and
the worker keeps it, with the model it builds on the first call, between rounds.

``train_with_pointers`` is the tutorial loop: send the model to the data, forward, backward
and step on pointers, get the model back.

>>> import torch, bastion as sy
>>> from bastion.federated import FedAvg
>>> from bastion.federated.training import LocalTraining
>>> model = torch.nn.Linear(3, 2)
>>> step = LocalTraining(model, FedAvg(), batch_size=4, epochs=1)
>>> data, target = torch.randn(8, 3), torch.tensor([0, 1] * 4)
>>> flat, metrics = step(data, target, step.layout.flatten(model.state_dict()), seed=0)
>>> sorted(step.layout.unflatten(flat)), metrics["samples"]
(['bias', 'weight'], 8)
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bastion.federated.strategies import State, Strategy

if TYPE_CHECKING:
    from bastion.federated.privacy import DPSGD
from bastion.modules import get_module, send_module

__all__ = ["LocalTraining", "StateLayout", "default_optimizer", "train_with_pointers"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Any], torch.optim.Optimizer]


def default_optimizer(lr: float) -> OptimizerFactory:
    """Plain SGD at ``lr``: the clients' optimizer unless one is given."""
    return functools.partial(torch.optim.SGD, lr=lr)


class StateLayout:
    """How a model's state packs into one flat tensor per dtype, and back (as views).

    >>> layout = StateLayout(torch.nn.Linear(3, 2).state_dict())
    >>> flat = layout.flatten({"weight": torch.ones(2, 3), "bias": torch.zeros(2)})
    >>> {k: tuple(v.shape) for k, v in flat.items()}, layout.unflatten(flat)["bias"]
    ({'float32': (8,)}, tensor([0., 0.]))
    """

    def __init__(self, state: State) -> None:
        self.groups: dict[str, list[tuple[str, torch.Size]]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for name, value in state.items():
            key = str(value.dtype).removeprefix("torch.")
            self.groups.setdefault(key, []).append((name, value.shape))
            self.dtypes[key] = value.dtype
        self.names = [name for entries in self.groups.values() for name, _ in entries]

    def flatten(self, state: State) -> dict[str, torch.Tensor]:
        """``{dtype name: one flat tensor}`` holding every entry of ``state``."""
        return {
            key: torch.cat([state[name].reshape(-1) for name, _ in entries])
            for key, entries in self.groups.items()
        }

    def unflatten(self, flat: dict[str, torch.Tensor]) -> State:
        """The state again, each entry a view of its flat tensor."""
        state = {}
        for key, entries in self.groups.items():
            parts = flat[key].split([shape.numel() for _, shape in entries])
            for (name, shape), part in zip(entries, parts):
                state[name] = part.view(shape)
        return {name: state[name] for name in self.names}


def _batch_order(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    """The index batches of ``epochs`` passes over ``n`` samples, each pass shuffled anew."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        yield from order.split(batch_size)


def _correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """How many predictions are right, for a classifier's (N, C) output and (N,) labels."""
    if output.dim() == 2 and target.dim() == 1 and not target.is_floating_point():
        return (output.argmax(1) == target).sum()
    return None


def _mean_loss(losses: Iterable[float], sizes: list[int]) -> float:
    """The mean loss per sample, from each batch's mean loss and size."""
    return sum(loss * size for loss, size in zip(losses, sizes)) / max(sum(sizes), 1)


class LocalTraining:
    """Train a copy of ``model`` on a worker's data for ``epochs``; return the update.

    ``__call__(data, target, flat_state, seed)`` -> ``(flat_update, metrics)``: the states
    are packed by ``layout``; the update comes from ``strategy.client_update``; metrics hold
    ``loss`` (mean over samples seen), ``seen`` and ``samples``, and with ``accuracy`` also
    ``correct`` (for classifiers: three more ops per batch, some 10% of a small step).

    Under differential privacy (``private=True``) only the flat update is returned: the loss
    and counts on private data would leave without noise. ``dp_sgd`` (a ``DPSGD``) trains
    by DP-SGD (``opacus``'s ``PrivacyEngine``); ``noise=False`` in a call tells a
    ``DPFedAvg`` client update to clip only, because the worker's release policy adds the
    noise.
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        *,
        batch_size: int = 32,
        epochs: int = 1,
        loss_fn: LossFn = F.cross_entropy,
        optimizer: OptimizerFactory | None = None,
        accuracy: bool = False,
        private: bool = False,
        dp_sgd: DPSGD | None = None,
    ) -> None:
        self.skeleton = copy.deepcopy(model)
        # The structure travels, not the weights (the state comes with every call); a model
        # with buffers outside its state_dict travels whole, since they would be lost.
        self.on_meta = not any(m._non_persistent_buffers_set for m in model.modules())
        if self.on_meta:
            self.skeleton.to("meta")
        self.layout = StateLayout(self.skeleton.state_dict())
        self.strategy = strategy
        self.batch_size = batch_size
        self.epochs = epochs
        self.loss_fn = loss_fn
        self.optimizer = optimizer or default_optimizer(0.01)
        self.accuracy = accuracy
        self.private = private or dp_sgd is not None
        self.dp_sgd = dp_sgd
        self._model: nn.Module | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def _local_model(self) -> nn.Module:
        if self._model is None:
            self._model = copy.deepcopy(self.skeleton)
            if self.on_meta:
                self._model.to_empty(device="cpu")
        return self._model

    def __call__(
        self,
        data: torch.Tensor,
        target: torch.Tensor,
        flat_state: dict[str, torch.Tensor],
        seed: int,
        noise: bool = True,
    ) -> Any:
        """Train from the flat global state; return the flat update and the metrics (under
        differential privacy, the flat update alone)."""
        with torch.enable_grad():  # whatever the caller's grad mode
            return self._train(data, target, flat_state, seed, noise)

    def _update(self, global_state: State, model: nn.Module, noise: bool) -> dict[str, Any]:
        with torch.no_grad():
            local_state = {name: value.detach() for name, value in model.state_dict().items()}
            if noise:
                update = self.strategy.client_update(global_state, local_state)
            else:  # a DPFedAvg client update whose noise the worker adds
                update = self.strategy.client_update(global_state, local_state, noise=False)
            return self.layout.flatten(update)

    def _train(
        self,
        data: torch.Tensor,
        target: torch.Tensor,
        flat_state: dict[str, torch.Tensor],
        seed: int,
        noise: bool,
    ) -> Any:
        global_state = self.layout.unflatten(flat_state)
        model = self._local_model()
        with torch.no_grad():
            model.load_state_dict(global_state)
        model.train()
        if self.dp_sgd is not None:
            trained = _dp_sgd(model, data, target, self.dp_sgd, self.optimizer, self.loss_fn,
                              self.batch_size, self.epochs)  # fmt: skip
            return self._update(global_state, trained, noise)
        optimizer = self.optimizer(model.parameters())
        penalty = self.strategy.local_penalty
        losses, hits, sizes = [], [], []
        classifier = self.accuracy
        for index in _batch_order(len(data), self.batch_size, self.epochs, seed):
            x, y = data[index], target[index]
            optimizer.zero_grad()
            output = model(x)
            loss = self.loss_fn(output, y)
            extra = penalty(model, global_state)
            (loss if extra is None else loss + extra).backward()
            optimizer.step()
            losses.append(loss.item())
            sizes.append(len(index))
            if classifier:
                correct = _correct(output.detach(), y)
                classifier = correct is not None
                hits.append(correct)
        update = self._update(global_state, model, noise)
        if self.private:
            return update
        seen = sum(sizes)
        metrics = {"loss": _mean_loss(losses, sizes), "seen": seen, "samples": len(data)}
        if classifier and seen:
            metrics["correct"] = int(torch.stack(hits).sum())
        return update, metrics


def _dp_sgd(model: nn.Module, data: torch.Tensor, target: torch.Tensor, dp: DPSGD,
            optimizer: OptimizerFactory, loss_fn: LossFn, batch_size: int,
            epochs: int) -> nn.Module:  # fmt: skip
    """``epochs`` of DP-SGD on a copy of ``model`` (``opacus``'s ``PrivacyEngine``: Poisson
    batches of expected size ``batch_size``, per-example clipping, noise on every step from
    a generator seeded by the operating system); returns the trained copy."""
    import secrets

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    local = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(data, target), batch_size=batch_size)
    with warnings.catch_warnings():  # the noise comes from an OS-seeded generator, below
        warnings.filterwarnings("ignore", "Secure RNG turned off", UserWarning)
        engine = PrivacyEngine(accountant="rdp")
    noise = torch.Generator().manual_seed(secrets.randbits(63))
    private, opt, batches = engine.make_private(
        module=local, optimizer=optimizer(local.parameters()), data_loader=loader,
        noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
        noise_generator=noise,
    )  # fmt: skip
    try:
        with warnings.catch_warnings():  # hooks on a first layer whose input needs no grad
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            for _ in range(epochs):
                for x, y in batches:
                    if len(x) == 0:  # an empty Poisson batch: skipped (one release fewer)
                        continue
                    opt.zero_grad()
                    loss_fn(private(x), y).backward()
                    opt.step()
    finally:
        private._close()
    return local


def train_with_pointers(
    model: nn.Module,
    data: torch.Tensor,
    target: torch.Tensor,
    strategy: Strategy,
    *,
    batch_size: int = 32,
    epochs: int = 1,
    loss_fn: LossFn = F.cross_entropy,
    optimizer: OptimizerFactory | None = None,
    seed: int = 0,
    accuracy: bool = False,
) -> tuple[State, dict[str, float]]:
    """The PySyft tutorial's loop on one worker's data (pointers ``data``, ``target``).

    A copy of ``model`` goes to the data's worker; each batch runs forward, ``backward`` and
    ``step`` there through pointers; the copy comes back and the update is made here from
    it. The same batches, in the same order, as ``LocalTraining`` with the same ``seed``,
    and the same metrics.
    """
    global_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    worker = data.location
    local = copy.deepcopy(model)
    send_module(local, worker)
    remote_global = None
    if type(strategy).local_penalty is not Strategy.local_penalty:
        remote_global = {name: worker.send(value) for name, value in global_state.items()}
    opt = (optimizer or default_optimizer(0.01))(local.parameters())
    losses, hits, sizes = [], [], []
    classifier = accuracy
    for index in _batch_order(len(data), batch_size, epochs, seed):
        x, y = data[index], target[index]
        opt.zero_grad()
        output = local(x)
        loss = loss_fn(output, y)
        extra = strategy.local_penalty(local, remote_global) if remote_global else None
        (loss if extra is None else loss + extra).backward()
        opt.step()
        losses.append(loss)  # stacked and fetched once, at the end
        sizes.append(len(index))
        if classifier:
            with torch.no_grad():
                correct = _correct(output, y)
            classifier = correct is not None
            hits.append(correct)
    get_module(local)
    local_state = {name: value.detach() for name, value in local.state_dict().items()}
    with torch.no_grad():
        update = strategy.client_update(global_state, local_state)
        batch_losses = torch.stack(losses).get().tolist() if losses else []
        metrics = {"loss": _mean_loss(batch_losses, sizes), "seen": sum(sizes),
                   "samples": len(data)}  # fmt: skip
        if classifier and hits:
            metrics["correct"] = int(torch.stack(hits).sum().get())
    return update, metrics
