"""``fit``: train any PyTorch model (tiled, sub-bit, bit-wise or plain) in one call.

:func:`fit` is the loop ``tbn-tvm train`` uses for every run, made public: mini-batch training
with an optimiser and a learning-rate schedule, a tqdm progress bar, a validation pass after
every epoch, a :class:`History` of per-epoch loss and accuracy, and multi-process data-parallel
training with ``torch.distributed`` (DistributedDataParallel, gloo on CPU) when started by
``torchrun``.

>>> import numpy as np
>>> from torch import nn
>>> from tbn_tvm.torch import fit, tbnify
>>> rng = np.random.default_rng(0)
>>> x = rng.random((256, 16), dtype=np.float32)
>>> y = (x[:, 0] > 0.5).astype(np.int64)              # a two-class toy problem
>>> model = tbnify(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
...                              nn.Linear(32, 2)), p=4, min_size=0)
>>> history = fit(model, (x, y), (x[:64], y[:64]), epochs=3, batch_size=32, progress=False)
>>> len(history.loss), history.val_accuracy[-1] > 0.5
(3, True)

Data-parallel (every process runs the same script; ``fit`` finds ``RANK``/``WORLD_SIZE``)::

    torchrun --nproc_per_node 2 my_training_script.py
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tbn_tvm.errors import TBNError
from tbn_tvm.torch.shapes import SHAPE_ERRORS, input_error, watch

__all__ = ["fit", "evaluate", "History", "GlobalBatches", "distributed_env"]

#: Batch size of the validation / evaluation passes (no gradients, so larger than training).
EVAL_BATCH = 1000


# --------------------------------------------------------------------------------- the history
@dataclass
class History:
    """What :func:`fit` measured, one entry per epoch.

    ``epochs[i]`` is a dict with ``epoch`` (1-based), ``loss`` (mean training loss over the
    epoch's samples, measured on the fly in training mode), ``accuracy`` (fraction of those
    samples whose argmax matched the label; ``None`` when the task is not classification),
    ``val_loss`` and ``val_accuracy`` (after the epoch, in eval mode; ``None`` without
    validation data), ``lr`` (the learning rate after the epoch's last step) and ``seconds``.
    Under ``torch.distributed`` the figures are over all processes' samples.
    """

    epochs: list[dict] = field(default_factory=list)
    world_size: int = 1
    steps: int = 0  # optimiser steps taken
    stopped_early: bool = False
    seconds: float = 0.0

    def _column(self, key: str) -> list:
        return [e[key] for e in self.epochs]

    @property
    def loss(self) -> list[float]:
        """Training loss per epoch."""
        return self._column("loss")

    @property
    def accuracy(self) -> list[float | None]:
        """Training accuracy (fraction) per epoch."""
        return self._column("accuracy")

    @property
    def val_loss(self) -> list[float | None]:
        """Validation loss per epoch."""
        return self._column("val_loss")

    @property
    def val_accuracy(self) -> list[float | None]:
        """Validation accuracy (fraction) per epoch."""
        return self._column("val_accuracy")

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {
            "epochs": [dict(e) for e in self.epochs],
            "world_size": self.world_size,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
        }

    def __repr__(self) -> str:
        if not self.epochs:
            return "History(no epochs)"
        last = self.epochs[-1]
        parts = [f"{len(self.epochs)} epochs", f"loss {last['loss']:.4f}"]
        for key in ("accuracy", "val_loss", "val_accuracy"):
            if last.get(key) is not None:
                parts.append(f"{key} {last[key]:.4f}")
        return f"History({', '.join(parts)})"


# ------------------------------------------------------------------------------------- the data
def _to_tensor(a, what: str) -> torch.Tensor | np.ndarray:
    if isinstance(a, torch.Tensor | np.ndarray):
        return a
    try:
        return np.asarray(a)
    except Exception:
        raise TBNError(f"{what}: cannot be read as an array ({type(a).__name__})") from None


def _as_input(x) -> torch.Tensor:
    """A batch of inputs as a tensor: uint8 pixels -> float32 in [0, 1], float64 -> float32."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.dtype == torch.float64:
        return t.float()
    return t


def _as_target(y) -> torch.Tensor:
    t = y if isinstance(y, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(y))
    if t.dtype == torch.bool or not (t.is_floating_point() or t.is_complex()):
        return t.long()
    return t.float() if t.dtype == torch.float64 else t


class _Arrays:
    """In-memory ``(x, y)``: batches are cut by indexing (fast, and the order is exactly ours)."""

    def __init__(self, x, y, what: str) -> None:
        x, y = _to_tensor(x, f"{what} x"), _to_tensor(y, f"{what} y")
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
            raise TBNError(
                f"{what}: x and y must be arrays with the same number of samples, got shapes "
                f"{list(x.shape)} and {list(y.shape)}"
            )
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.x, torch.Tensor):
            t = torch.from_numpy(idx)
            return _as_input(self.x[t]), _as_target(self.y[t])
        return _as_input(self.x[idx]), _as_target(self.y[idx])


class _MapDataset:
    """A map-style ``Dataset`` (``__len__`` and ``__getitem__`` giving ``(x, y)``)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.utils.data import default_collate

        items = [self.dataset[int(i)] for i in idx]
        try:
            xb, yb = default_collate(items)
        except (TypeError, ValueError) as e:
            raise TBNError(f"the data set's items must be (input, target) pairs: {e}") from None
        return _as_input(xb), _as_target(yb)


def _source(data, what: str):
    """``(x, y)`` arrays/tensors, a ``TensorDataset``, a map-style ``Dataset`` or a ``DataLoader``."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    if isinstance(data, DataLoader):
        return data
    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise TBNError(f"{what}: a TensorDataset of (inputs, targets), got {len(data.tensors)} tensors")
        return _Arrays(*data.tensors, what=what)
    if isinstance(data, tuple | list) and len(data) == 2:
        return _Arrays(data[0], data[1], what=what)
    if isinstance(data, Dataset) or (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        return _MapDataset(data)
    raise TBNError(
        f"{what}: expected (x, y) arrays or tensors, a torch Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )


class GlobalBatches:
    """The batches of one epoch for one process.

    One process: a permutation of the ``n`` samples (``torch.randperm`` with a generator seeded
    once, drawn again every epoch; ``shuffle=False``: the natural order) cut into global
    batches of ``batch_size``.  ``world_size`` processes: every process draws the *same*
    permutation and takes its strided share ``batch[rank::world_size]`` of every global batch
    (what ``DistributedSampler`` + a per-process batch of ``batch_size / world_size`` does,
    without its padding), so the processes together see exactly the one-process batches.
    A global batch that would give some process fewer than ``min_batch`` samples is skipped by
    every process (``min_batch = 2`` for models with BatchNorm, which cannot train on one sample).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int | None,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        min_batch: int = 1,
    ) -> None:
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.rank, self.world_size, self.min_batch = rank, world_size, min_batch
        self.generator = torch.Generator()
        self.generator.manual_seed(0 if seed is None else seed)
        self._epoch = -1

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (skipped ones included)."""
        return math.ceil(self.n / self.batch_size)

    def epoch(self) -> Iterator[tuple[np.ndarray, int]]:
        """``(this process's indices, global batch size)`` for each batch of the next epoch."""
        self._epoch += 1
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).numpy()
        else:
            order = np.arange(self.n)
        for i in range(self.steps_per_epoch):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            if len(idx) // self.world_size < self.min_batch:
                continue
            yield idx[self.rank :: self.world_size], len(idx)


# ------------------------------------------------------------------------------------ the loop
def distributed_env() -> tuple[int, int] | None:
    """``(rank, world_size)`` when this process was started by ``torchrun`` (or is part of an
    initialised process group), else ``None``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def _init_distributed(device: torch.device) -> tuple[int, int]:
    import torch.distributed as dist

    if not dist.is_available():
        raise TBNError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise TBNError(
                f"distributed training needs the environment torchrun sets ({', '.join(missing)} missing)",
                hint="start the script with torchrun --nproc_per_node N script.py",
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_destroy_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_group() -> None:
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def _loss_fn(loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(loss):
        return loss
    if loss in ("cross_entropy", "ce"):
        return F.cross_entropy
    if loss == "mse":
        return F.mse_loss
    raise TBNError(f"unknown loss {loss!r}", hint="use 'cross_entropy', 'mse' or a callable(output, target)")


def _optimizer(optimizer, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TBNError("the model has no trainable parameters")
    if callable(optimizer):
        return optimizer(params)
    name = str(optimizer).lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise TBNError(
        f"unknown optimizer {optimizer!r}",
        hint="use 'adam', 'adamw', 'sgd', an Optimizer or a callable(params)",
    )


def _scheduler(schedule, opt: torch.optim.Optimizer, lr: float, total_steps: int):
    if schedule is None or schedule == "constant":
        return None
    if callable(schedule):
        return schedule(opt, total_steps)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1))
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    raise TBNError(
        f"unknown schedule {schedule!r}",
        hint="use 'onecycle', 'cosine', 'constant', None or a callable(optimizer, total_steps)",
    )


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _in_notebook(tqdm_class: type) -> bool:
    """Whether ``tqdm.auto`` chose its notebook bar (a Jupyter kernel is running): its class
    then derives from ``tqdm.notebook``'s.  Outside a notebook ``tqdm.auto.tqdm`` is still not
    ``tqdm.std.tqdm`` (it adds asyncio support), so comparing the two classes says nothing."""
    return any(c.__module__ == "tqdm.notebook" for c in tqdm_class.__mro__)


def _bar_disabled(tqdm_class: type) -> bool | None:
    """tqdm's ``disable``: ``False`` (shown) in a notebook or with ``TBN_TVM_PROGRESS=1``,
    ``True`` with ``TBN_TVM_PROGRESS=0``, else ``None`` (shown only when stderr is a terminal,
    so log files stay clean)."""
    forced = os.environ.get("TBN_TVM_PROGRESS", "").strip()
    if forced:
        return forced == "0"
    return False if _in_notebook(tqdm_class) else None


def _bar(total: int, desc: str, options: dict | None):
    if options is None:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    kwargs = dict(
        total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, disable=_bar_disabled(tqdm), unit="step"
    )
    kwargs.update(options)
    return tqdm(**kwargs)


def _checked_step(net: nn.Module, model: nn.Module, loss_fn, xb: torch.Tensor, yb: torch.Tensor, what: str):
    """``(net(xb), loss_fn(output, yb))`` for the first batch: an input the model does not take,
    or an output the loss does not take with the targets, is one :class:`TBNError` naming the
    shapes (and the layer that refused the input), not torch's trace."""
    with watch(model) as seen:
        try:
            out = net(xb)
        except SHAPE_ERRORS as e:
            if isinstance(e, torch.OutOfMemoryError):
                raise
            raise input_error(model, tuple(xb.shape), e, seen, what) from None
    try:
        return out, loss_fn(out, yb)
    except SHAPE_ERRORS as e:
        if isinstance(e, torch.OutOfMemoryError):
            raise
        reason = " ".join(str(e).split())[:200]
        shapes = f"the model's output [{'x'.join(map(str, out.shape))}] and the targets [{'x'.join(map(str, yb.shape))}]"
        raise TBNError(
            f"the loss does not take {shapes} of {what} ({reason})",
            hint="cross_entropy takes logits [N, C] and class indices [N] (int64); mse takes targets "
            "of the output's shape",
        ) from None


def _correct(out: torch.Tensor, target: torch.Tensor) -> float | None:
    if out.ndim != 2 or target.ndim != 1 or target.dtype != torch.long or len(out) != len(target):
        return None
    return float((out.argmax(1) == target).sum())


def evaluate(
    model: nn.Module,
    data,
    *,
    loss="cross_entropy",
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "cpu",
) -> dict:
    """Mean loss and accuracy of ``model`` (eval mode, no gradients) on ``data``.

    ``data`` is what :func:`fit` takes.  Returns ``{"loss": float, "accuracy": float | None,
    "samples": int}``; accuracy is the fraction of argmax hits and ``None`` when the outputs are
    not ``[N, classes]`` logits with integer labels.  The model is left in eval mode.

    >>> import torch
    >>> evaluate(torch.nn.Linear(4, 3), (torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)))["samples"]
    5
    """
    return _evaluate(model, _source(data, "data"), _loss_fn(loss), torch.device(device), batch_size)


@torch.no_grad()
def _evaluate(model: nn.Module, source, loss_fn, device: torch.device, batch_size: int = EVAL_BATCH) -> dict:
    model.eval()
    total = correct = 0.0
    seen = 0
    classify = True
    batches: Any
    if hasattr(source, "batch"):
        order = np.arange(len(source))
        batches = (source.batch(order[i : i + batch_size]) for i in range(0, len(source), batch_size))
    else:
        batches = ((_as_input(b[0]), _as_target(b[1])) for b in source)
    for xb, yb in batches:
        xb, yb = xb.to(device), yb.to(device)
        if seen == 0:
            out, batch_loss = _checked_step(model, model, loss_fn, xb, yb, "a validation batch")
        else:
            out = model(xb)
            batch_loss = loss_fn(out, yb)
        total += float(batch_loss) * len(xb)
        c = _correct(out, yb)
        classify = classify and c is not None
        correct += c or 0.0
        seen += len(xb)
    if seen == 0:
        raise TBNError("evaluation data is empty")
    return {"loss": total / seen, "accuracy": correct / seen if classify else None, "samples": seen}


def fit(
    model: nn.Module,
    train_data,
    val_data=None,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    optimizer: str | torch.optim.Optimizer | Callable = "adam",
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
    schedule: str | Callable | None = "onecycle",
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    progress: bool | dict = True,
    seed: int | None = 0,
    shuffle: bool = True,
    callbacks: Sequence[Callable] | None = None,
    distributed: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    desc: str = "fit",
    ddp_options: dict | None = None,
) -> History:
    """Train ``model`` in place on ``train_data``; returns the per-epoch :class:`History`.

    **Data.** ``train_data`` / ``val_data`` may be

    * a pair ``(x, y)`` of numpy arrays or torch tensors, ``x`` of shape ``[N, *input_shape]``
      and ``y`` of shape ``[N]`` (class indices) or ``[N, ...]`` (regression targets);
    * a ``TensorDataset(x, y)`` or any map-style ``Dataset`` whose items are ``(input, target)``;
    * a ``DataLoader``, used as given (its batch size is per process; under ``torch.distributed``
      it must have a ``DistributedSampler``; ``batch_size``, ``shuffle`` and ``seed`` do not
      apply to it).

    ``uint8`` inputs are scaled to float32 in [0, 1] batch by batch (the pixels of
    :mod:`tbn_tvm.datasets`), float64 becomes float32; integer labels become int64.

    **Training.** Each epoch visits the samples in a random order (``torch.randperm`` with a
    generator seeded from ``seed`` once; ``shuffle=False`` keeps the order) in batches of
    ``batch_size``; the last batch may be smaller; a batch of one sample is skipped when the
    model has BatchNorm.  Per batch: forward in training mode, ``loss(output, target)`` (a mean
    over the batch), backward, optimiser step, scheduler step.

    * ``optimizer``: ``"adam"`` (default), ``"adamw"``, ``"sgd"`` (momentum 0.9), an
      ``Optimizer`` built on the model's parameters, or ``callable(params) -> Optimizer``.
    * ``lr``: the learning rate (the peak of the ``"onecycle"`` schedule).
    * ``schedule``: ``"onecycle"`` (default, ``OneCycleLR`` over all steps), ``"cosine"``,
      ``"constant"`` / ``None``, or ``callable(optimizer, total_steps) -> scheduler`` (stepped
      after every batch).
    * ``loss``: ``"cross_entropy"`` (default, logits ``[N, C]`` and labels ``[N]``), ``"mse"`` or
      ``callable(output, target) -> scalar`` (mean over the batch).
    * ``seed``: seeds the shuffling and, for the duration of the call, torch's global RNG (dropout
      masks and the like); the caller's RNG state is restored afterwards.  Seed the model's
      initialisation yourself (``torch.manual_seed``) before building it.
    * ``callbacks``: callables ``cb(epoch, logs, model)`` called after every epoch (on process 0
      only) with ``epoch`` 1-based, ``logs`` the epoch's :class:`History` entry and ``model`` the
      trained module; one returning ``True`` stops training after that epoch.
    * ``checkpoint``: a file to write ``model.state_dict()`` to at the end (atomically; process 0
      only).
    * ``progress``: a tqdm bar over the steps on stderr, shown on a terminal or in a notebook,
      not when stderr is a file or a pipe (a log); ``TBN_TVM_PROGRESS=1`` / ``0`` in the
      environment shows it always / never; a dict adds tqdm arguments (``{"leave": False}``,
      ``{"disable": False}`` to show it in a log too).
    * ``device``: where the model and the batches go (``"cpu"``, ``"cuda"``).

    **Distributed data parallel.** Under ``torchrun`` (environment ``RANK`` and ``WORLD_SIZE``),
    or with ``distributed=True``, every process runs ``fit`` with the same arguments: the process
    group is initialised if needed (``gloo`` on CPU, ``nccl`` on CUDA), the model is wrapped in
    ``DistributedDataParallel`` (gradients averaged over processes) and every process trains on
    its share of each global batch of ``batch_size`` samples (see :class:`GlobalBatches`); each
    process's loss is weighted by its share of the batch, so the averaged gradient is the
    gradient of the mean loss over the global batch: with a model without BatchNorm or dropout
    the weights equal a one-process run's up to float rounding.  BatchNorm statistics are
    computed per process.  Only process 0 shows progress, calls callbacks and writes the
    checkpoint; the metrics are summed over processes; at the end every process holds process
    0's parameters and buffers.  ``distributed=False`` trains alone even under torchrun.

    Returns the :class:`History`; the model is left in eval mode.  Raises
    :class:`~tbn_tvm.errors.TBNError` (a ``ValueError``-like one-line error) for empty or
    mismatched data, unknown option names, bad sizes, and distributed training without the
    torchrun environment; and for a first training or validation batch the model does not
    take (the message names the batch's shape, the layer that refused it, the shape that layer
    got and the shape it takes) or an output the loss does not take with the targets (both
    shapes named).

    >>> import torch
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> h = fit(torch.nn.Linear(4, 2), (x, y), epochs=2, batch_size=16, progress=False)
    >>> [e["epoch"] for e in h.epochs], h.steps
    ([1, 2], 8)
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(model, nn.Module):
        raise TBNError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TBNError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, int | float) and lr > 0):
        raise TBNError(f"lr must be positive, got {lr!r}")
    device = torch.device(device)
    loss_fn = _loss_fn(loss)
    train = _source(train_data, "train_data")
    val = _source(val_data, "val_data") if val_data is not None else None
    if len(train) == 0:
        raise TBNError("train_data is empty")

    if distributed is None:
        distributed = distributed_env() is not None
    rank, world = 0, 1
    if distributed:
        rank, world = _init_distributed(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    main = rank == 0

    model.to(device)
    min_batch = 2 if _has_batchnorm(model) else 1
    if isinstance(train, DataLoader):
        if world > 1 and not isinstance(train.sampler, DistributedSampler):
            raise TBNError(
                "under torch.distributed a DataLoader needs a DistributedSampler",
                hint="pass (x, y) or a Dataset and let fit shard it, or build the loader with "
                "sampler=DistributedSampler(dataset)",
            )
        batches = None
        steps_per_epoch = len(train)
    else:
        batches = GlobalBatches(len(train), batch_size, seed, shuffle, rank, world, min_batch)
        steps_per_epoch = batches.steps_per_epoch

    opt = _optimizer(optimizer, model, lr, weight_decay)
    sched = _scheduler(schedule, opt, lr, epochs * steps_per_epoch)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_kwargs = dict(ddp_options or {})
        if device.type == "cuda":
            ddp_kwargs.setdefault("device_ids", [device.index])
        net = DistributedDataParallel(model, **ddp_kwargs)

    bar_options = None
    if progress and main:
        bar_options = dict(progress) if isinstance(progress, dict) else {}
    bar = _bar(epochs * steps_per_epoch, desc, bar_options)
    history = History(world_size=world)
    t_start = time.perf_counter()
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    try:
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                net.train()
                loss_sum = correct = 0.0
                seen = 0
                classify = True
                if batches is not None:
                    steps = ((train.batch(idx), g) for idx, g in batches.epoch())
                else:
                    if isinstance(train.sampler, DistributedSampler):
                        train.sampler.set_epoch(epoch - 1)
                    steps = (((_as_input(b[0]), _as_target(b[1])), None) for b in train)
                done = 0
                for (xb, yb), global_size in steps:
                    xb, yb = xb.to(device), yb.to(device)
                    if history.steps == 0:  # the first batch: a wrong shape is one clear error
                        out, batch_loss = _checked_step(net, model, loss_fn, xb, yb, "a training batch")
                    else:
                        out = net(xb)
                        batch_loss = loss_fn(out, yb)
                    scaled = batch_loss
                    if world > 1 and global_size is not None:
                        # DDP averages gradients over processes: weight each by its share
                        scaled = batch_loss * (len(xb) * world / global_size)
                    opt.zero_grad(set_to_none=True)
                    scaled.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    history.steps += 1
                    loss_sum += batch_loss.item() * len(xb)
                    c = _correct(out, yb)
                    classify = classify and c is not None
                    correct += c or 0.0
                    seen += len(xb)
                    done += 1
                    if bar is not None:
                        bar.update(1)
                if bar is not None and done < steps_per_epoch:
                    bar.update(steps_per_epoch - done)  # skipped batches
                if world > 1:
                    loss_sum, correct, seen = _all_sum(loss_sum, correct, seen)
                logs = {
                    "epoch": epoch,
                    "loss": loss_sum / max(seen, 1),
                    "accuracy": correct / max(seen, 1) if classify and seen else None,
                    "val_loss": None,
                    "val_accuracy": None,
                    "lr": opt.param_groups[0]["lr"],
                    "seconds": 0.0,
                }
                if val is not None:
                    logs["val_loss"], logs["val_accuracy"] = _validate(
                        model, val, loss_fn, device, main, world
                    )
                    net.train()
                logs["seconds"] = time.perf_counter() - t0
                history.epochs.append(logs)
                if bar is not None:
                    post = {"loss": f"{logs['loss']:.3f}"}
                    if logs["accuracy"] is not None:
                        post["acc"] = f"{logs['accuracy']:.3f}"
                    if logs["val_accuracy"] is not None:
                        post["val_acc"] = f"{logs['val_accuracy']:.3f}"
                    bar.set_postfix(post)
                stop = False
                if main:
                    for cb in callbacks or ():
                        stop = bool(cb(epoch, dict(logs), model)) or stop
                if world > 1:
                    stop = _broadcast_flag(stop)
                if stop:
                    history.stopped_early = epoch < epochs
                    break
    finally:
        if bar is not None:
            bar.close()
    if world > 1:
        _sync_from_rank0(model)
    history.seconds = time.perf_counter() - t_start
    model.eval()
    if checkpoint is not None and main:
        _save_atomic(model.state_dict(), Path(checkpoint))
    return history


def _validate(model: nn.Module, val, loss_fn, device, main: bool, world: int) -> tuple[float, float | None]:
    """Process 0 evaluates the whole validation set; the others receive its figures."""
    values = [math.nan, math.nan]
    if main:
        r = _evaluate(model, val, loss_fn, device)
        values = [r["loss"], math.nan if r["accuracy"] is None else r["accuracy"]]
    if world > 1:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(t, 0)
        values = t.tolist()
    return values[0], None if math.isnan(values[1]) else values[1]


def _all_sum(*values: float) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _broadcast_flag(flag: bool) -> bool:
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, 0)
    return bool(t.item())


@torch.no_grad()
def _sync_from_rank0(model: nn.Module) -> None:
    import torch.distributed as dist

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, 0)


def _save_atomic(state: dict, path: Path) -> None:
    if not path.parent.is_dir():
        raise TBNError(f"{path.parent}: no such folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
