"""The training loop both methods share: seeded, with a held-out validation loss, early stopping
on its plateau, progress on stderr and a per-epoch callback.

    report = fit_model(model, epoch_batches, val_batches, loss, options)

* Reproducible: the caller builds the model inside `seeded(seed)` (its own RNG state, the
  process's global one untouched) and draws every crop, mask and perturbation from the
  `torch.Generator` it is handed; on one machine with one thread count the same seed gives the
  same weights and therefore the same scores.
* Validation: `val_batches` are fixed (drawn once, with their own generator), so the
  validation loss changes only with the weights. After each epoch it is computed; an epoch
  that does not lower the best by more than `min_delta` (relative) counts towards `patience`,
  and when `patience` epochs in a row have not, training stops and the best epoch's weights
  are kept.
* Progress: a tqdm bar on stderr (`progress=False`: none), `genad.engines.progress.step`
  ("training", epoch, epochs) for a run's own display and its stop button, and
  `callback(EpochInfo)` after each epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from genad.engines.progress import step


@dataclass
class EpochInfo:
    """What a callback hears after each epoch."""

    epoch: int  # 1-based
    epochs: int  # the most that will run
    train_loss: float
    val_loss: float
    best_val_loss: float
    best_epoch: int
    seconds: float  # since training began
    stopping: bool  # True: this is the last epoch (plateau or the last one asked for)


@dataclass
class TrainReport:
    """How training went (kept in the fitted state as plain numbers, see `as_dict`)."""

    epochs_run: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    out_of_time: bool = False  # ended by the time limit
    seconds: float = 0.0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "out_of_time": self.out_of_time,
            "seconds": round(self.seconds, 3),
            "train_losses": [round(v, 6) for v in self.train_losses],
            "val_losses": [round(v, 6) for v in self.val_losses],
        }


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the block, torch's global RNG starts from `seed`; outside it is as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fit_model(
    model: nn.Module,
    epoch_batches: Callable[[int], Iterable[Any]],
    val_batches: Sequence[Any],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    patience: int,
    min_delta: float = 1e-3,
    weight_decay: float = 0.05,
    progress: bool = True,
    desc: str = "training",
    callback: Callable[[EpochInfo], Any] | None = None,
    time_limit: float | None = None,
) -> TrainReport:
    """Train `model` (in place) with AdamW and a cosine learning rate after a short warm-up.

    `epoch_batches(epoch)` yields the batches of one epoch (0-based); `loss(model, batch)` is
    the mean loss of a batch (a scalar tensor). `time_limit`: seconds after which no new epoch
    starts (a guard; a run it ends depends on the machine's speed, and says so in the report).
    Returns how it went; the model ends with the weights of its best validation epoch."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    report = TrainReport()
    best = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    wait = 0
    t0 = time.perf_counter()
    warmup = max(1, epochs // 10)
    bar = tqdm(total=epochs, desc=desc, file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(epochs):
            step("training", epoch, epochs)  # a run's display; stops here when asked
            # warm-up, then cosine down to a tenth, both by epoch
            f = (epoch + 1) / warmup if epoch < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
            for group in opt.param_groups:
                group["lr"] = lr * f
            model.train()
            total, count = 0.0, 0
            for batch in epoch_batches(epoch):
                value = loss(model, batch)
                opt.zero_grad(set_to_none=True)
                value.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total += float(value.detach())
                count += 1
            train_loss = total / max(1, count)
            val_loss = evaluate(model, val_batches, loss)
            report.train_losses.append(train_loss)
            report.val_losses.append(val_loss)
            report.epochs_run = epoch + 1
            if val_loss < best - min_delta * abs(best) if math.isfinite(best) else True:
                best, wait = val_loss, 0
                report.best_epoch = epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            else:
                wait += 1
            report.seconds = time.perf_counter() - t0
            out_of_time = time_limit is not None and report.seconds >= time_limit and epoch + 1 < epochs
            stopping = wait >= patience or epoch + 1 == epochs or out_of_time
            report.stopped_early = wait >= patience and epoch + 1 < epochs
            report.out_of_time = out_of_time and not report.stopped_early
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=report.best_epoch)
            if callback is not None:
                callback(
                    EpochInfo(
                        epoch + 1, epochs, train_loss, val_loss, best, report.best_epoch, report.seconds, stopping
                    )
                )
            if stopping:
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - t0
    return report


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Any], loss: Callable[[nn.Module, Any], torch.Tensor]) -> float:
    """Mean loss over fixed batches, the model in eval mode."""
    model.eval()
    values = [float(loss(model, b)) for b in batches]
    return sum(values) / max(1, len(values))
