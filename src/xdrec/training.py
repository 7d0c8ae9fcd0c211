"""One training loop for every model: SASRec per domain and each transfer strategy.

A model for this loop is an `nn.Module` that maps an input batch to hidden states and has an output
embedding table:

    model(inputs (B, L) long, **extras) -> hidden (B, L, D)
    model.item_embeddings()            -> (V, D); row 0 is padding, scores = hidden @ table.T

and the training data are `Examples`: input sequences, label sequences (the next item at each position,
0 = no loss) and optional per-example tensors passed to forward by keyword (a source user vector for a
prefix, domain ids, ...).

The loop: AdamW; bf16 autocast, pinned batches and optional `torch.compile` on CUDA, every core on CPU;
a validation callback after each epoch with early stopping by patience, keeping the best weights (chosen
on validation, never test); a rich progress bar; one `metrics.jsonl` line per epoch; and, after each
epoch, a resumable training state in `<out_dir>/train_state/` (weights, optimizer, RNG states, epoch:
safetensors + JSON). Same seed, device and data give identical weights on CPU, and so does a run
interrupted and resumed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from xdrec.checkpoint import load_tensors, optimizer_from_tensors, optimizer_to_tensors, save_tensors
from xdrec.devices import autocast, cpu_threads, resolve_device
from xdrec.errors import XdrecError
from xdrec.models.losses import LOSSES, LossChoice, LossFn, choose_loss, make_loss
from xdrec.workspace import atomic_path, read_json, write_json

STATE_DIR = "train_state"
METRICS = "metrics.jsonl"
# A resumed run must repeat these, or it would not be the same run continued.
# Batches per pool of similar-length examples (see _length_bucketed_batches).
BUCKET_BATCHES = 50
RESUME_KEYS = ("batch_size", "lr", "weight_decay", "loss", "negatives", "seed")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0  # the paper uses none; the embedding table is most of the weights
    loss: str = "auto"  # auto | ce | bce | sampled (see xdrec.models.losses)
    negatives: int = 256  # negatives per batch for `sampled`
    patience: int = 5  # epochs without a better validation metric before stopping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the model (pays off on CUDA for long runs)
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs, benchmarks)
    threads: int | None = None  # CPU threads; None: every core (or OMP_NUM_THREADS), restored afterwards

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.negatives < 1:
            raise XdrecError("epochs, batch size, patience and negatives must be at least 1")
        if self.lr <= 0:
            raise XdrecError(f"learning rate must be positive, got {self.lr}")
        if self.loss != "auto" and self.loss not in LOSSES:
            raise XdrecError(f"unknown loss {self.loss!r}: choose auto, {', '.join(LOSSES)}")


@dataclass(frozen=True)
class Examples:
    inputs: Tensor  # (N, L) long, left-padded item ids
    labels: Tensor  # (N, L) long, the next item at each position, 0 = no loss
    extras: Mapping[str, Tensor] = field(default_factory=dict)  # each (N, ...), passed to forward by name

    def __post_init__(self) -> None:
        if self.inputs.shape != self.labels.shape or self.inputs.dim() != 2:
            raise ValueError(
                f"inputs {tuple(self.inputs.shape)} and labels {tuple(self.labels.shape)} must be (N, L)"
            )
        for name, t in self.extras.items():
            if t.shape[0] != self.inputs.shape[0]:
                raise ValueError(f"extra {name!r} has {t.shape[0]} rows, inputs have {self.inputs.shape[0]}")

    def __len__(self) -> int:
        return self.inputs.shape[0]


class SequenceModel(Protocol):
    def __call__(self, inputs: Tensor, **extras: Tensor) -> Tensor: ...
    def item_embeddings(self) -> Tensor: ...


@dataclass(frozen=True)
class TrainResult:
    loss: str
    loss_reason: str
    epochs_run: int  # epochs completed, across resumes
    best_epoch: int  # the epoch whose weights the model now holds
    best_metric: float | None  # its validation metric; None without validation
    metric_name: str
    stopped_early: bool
    resumed_from_epoch: int  # 0 for a fresh run
    steps: int
    seconds: float  # this invocation's wall time
    device: str
    history: list[dict[str, Any]]  # the metrics.jsonl lines


@dataclass
class _State:
    """What survives between epochs (and on disk, between an interrupted run and its resume)."""

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def train(
    model: nn.Module,
    examples: Examples,
    config: TrainConfig,
    *,
    validate: Callable[[nn.Module], float] | None = None,
    metric_name: str = "NDCG@10",
    out_dir: Path | None = None,
    resume: bool = False,
    item_counts: np.ndarray | None = None,
    loss_fn: LossFn | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `model` in place and leave it holding its best weights (the last ones without `validate`).

    validate: called after each epoch with the model in eval mode; returns a higher-is-better metric.
    out_dir: where metrics.jsonl and the resumable train_state/ go (none written without it).
    resume: continue from out_dir/train_state/ if it exists (else start fresh).
    item_counts: training popularity per item id, for the `sampled` loss's negative distribution.
    loss_fn: `loss(hidden, labels, table) -> scalar` replacing config.loss (e.g. a regression loss).
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # dropout draws from the global generator
    model.to(device)
    n_items = model.item_embeddings().shape[0] - 1
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    negatives_gen = torch.Generator().manual_seed(config.seed + 1)
    if loss_fn is None:
        choice = choose_loss(config.loss, n_items, config.batch_size, examples.inputs.shape[1])
        loss_fn = make_loss(
            choice.name, negatives_gen, negatives=config.negatives, item_counts=item_counts, n_items=n_items
        )
    else:
        name = getattr(loss_fn, "__name__", "custom")
        choice = LossChoice(name, f"{name}: the caller's own loss function")
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=(0.9, 0.98),
        weight_decay=config.weight_decay,
        # One fused kernel instead of a dozen per tensor: ~10x faster updates of a large item table.
        fused=_fused_adamw_supported(device),
    )

    state, best = _State(), None
    if not resume and out_dir is not None:
        # A fresh run: a stale state must not be what a later --resume continues.
        shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
    if resume and out_dir is not None and (out_dir / STATE_DIR).exists():
        state, best = _load_state(
            out_dir / STATE_DIR, config, choice, model, optimizer, shuffle_gen, negatives_gen
        )
    resumed_from = state.epoch
    forward = torch.compile(model) if config.compile else model

    console = Console(stderr=True, quiet=not progress)
    console.log(f"training on {device}: {len(examples):,} sequences, {n_items:,} items, loss {choice.reason}")
    if resumed_from:
        console.log(f"resumed after epoch {resumed_from}")
    with cpu_threads(config.threads), _progress_bar(console, progress) as bar:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            if state.stopped_early or (config.max_steps is not None and state.step >= config.max_steps):
                break
            steps = -(-len(examples) // config.batch_size)
            task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=steps, loss="", speed="", metric="")
            t0 = time.perf_counter()
            mean_loss, seen = _train_epoch(
                model, forward, loss_fn, optimizer, examples, config, device, shuffle_gen, state, bar, task
            )
            seconds = time.perf_counter() - t0
            metric = None
            if validate is not None:
                model.eval()
                with torch.no_grad():
                    metric = float(validate(model))
                model.train()
            state.epoch = epoch
            improved = metric is None or state.best_metric is None or metric > state.best_metric
            if improved:
                state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
                best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                state.bad_epochs += 1
                state.stopped_early = state.bad_epochs >= config.patience
            line = {
                "epoch": epoch,
                "step": state.step,
                "loss": mean_loss,
                "seconds": round(seconds, 3),
                "sequences_per_s": round(seen / max(seconds, 1e-9), 1),
                metric_name: metric,
                "best": improved,
            }
            state.history.append(line)
            shown = "" if metric is None else f"{metric_name} {metric:.4f}" + (" *" if improved else "")
            bar.update(task, loss=f"{mean_loss:.4f}", speed=f"{line['sequences_per_s']:,.0f}", metric=shown)
            if out_dir is not None:
                _save_state(
                    out_dir / STATE_DIR,
                    config,
                    choice,
                    model,
                    optimizer,
                    shuffle_gen,
                    negatives_gen,
                    state,
                    best,
                )
                _write_metrics(out_dir / METRICS, state.history)
            if on_epoch is not None:
                on_epoch(line)
    if state.stopped_early:
        console.log(f"stopped early: no better {metric_name} for {config.patience} epochs")
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return TrainResult(
        loss=choice.name,
        loss_reason=choice.reason,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        best_metric=state.best_metric,
        metric_name=metric_name,
        stopped_early=state.stopped_early,
        resumed_from_epoch=resumed_from,
        steps=state.step,
        seconds=time.perf_counter() - started,
        device=str(device),
        history=list(state.history),
    )


def _train_epoch(
    model: nn.Module,
    forward: Callable[..., Tensor],
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    examples: Examples,
    config: TrainConfig,
    device: torch.device,
    shuffle_gen: torch.Generator,
    state: _State,
    bar: Progress,
    task: int,
) -> tuple[float, int]:
    """One pass over the shuffled examples; returns the mean batch loss and the sequences seen."""
    model.train()
    # Summed on the device: calling .item() every step would wait for the GPU each time.
    total, batches, seen = torch.zeros((), device=device), 0, 0
    for idx in _length_bucketed_batches(examples.inputs, config.batch_size, shuffle_gen):
        # Drop the columns that are padding in every row of the batch: left padding and positions counted
        # from the most recent item make this exact (the model is padding-invariant), and most histories
        # are much shorter than max_len. Widths are rounded up to a multiple of 8 to bound the number of
        # shapes torch.compile and the GPU kernels see.
        length = int((examples.inputs[idx] != 0).sum(1).max())
        width = min(examples.inputs.shape[1], -(-max(length, 1) // 8) * 8)
        inputs = _to_device(examples.inputs[idx, -width:], device)
        labels = _to_device(examples.labels[idx, -width:], device)
        extras = {k: _to_device(v[idx], device) for k, v in examples.extras.items()}
        with autocast(device):
            hidden = forward(inputs, **extras)  # (B, L, D)
            loss = loss_fn(hidden, labels, model.item_embeddings())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        batches, seen, state.step = batches + 1, seen + len(idx), state.step + 1
        if batches % 20 == 0:
            bar.update(task, completed=batches, loss=f"{total.item() / batches:.4f}")
        if config.max_steps is not None and state.step >= config.max_steps:
            break
    bar.update(task, completed=batches)
    return (total.item() / max(batches, 1)), seen


def _length_bucketed_batches(inputs: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled batches of example indices, each drawn from examples of similar length.

    The shuffled order is cut into pools of BUCKET_BATCHES batches; each pool is sorted by length and cut
    into batches, and the batches are shuffled. Batches stay random (and seeded) but have little padding.
    """
    order = torch.randperm(len(inputs), generator=generator)
    lengths = (inputs != 0).sum(1)
    pool = batch_size * BUCKET_BATCHES
    batches: list[Tensor] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[torch.sort(lengths[chunk], stable=True).indices]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def _fused_adamw_supported(device: torch.device) -> bool:
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    return device.type == "cuda" or (major, minor) >= (2, 4)  # the CPU kernel arrived in torch 2.4


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    # Pinned host memory lets the copy overlap with the GPU's work on the previous batch.
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} seq/s"),
        TextColumn("{task.fields[metric]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the saved state, so after a resume it matches the weights exactly.
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in history))


def _save_state(
    path: Path,
    config: TrainConfig,
    choice: LossChoice,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    negatives_gen: torch.Generator,
    state: _State,
    best: Mapping[str, Tensor] | None,
) -> None:
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    rng = {
        "shuffle": shuffle_gen.get_state(),
        "negatives": negatives_gen.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    with atomic_path(path) as tmp:  # the whole directory at once: never half a state
        tmp.mkdir()
        save_tensors(tmp / "weights.safetensors", model.state_dict())
        save_tensors(tmp / "best.safetensors", best if best is not None else model.state_dict())
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        save_tensors(tmp / "rng.safetensors", rng)
        write_json(
            tmp / "state.json",
            {"config": asdict(config), "loss": choice.name, "optimizer": opt_meta, **asdict(state)},
        )


def _load_state(
    path: Path,
    config: TrainConfig,
    choice: LossChoice,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    negatives_gen: torch.Generator,
) -> tuple[_State, dict[str, Tensor]]:
    saved = read_json(path / "state.json")
    changed = [k for k in RESUME_KEYS if saved["config"].get(k) != getattr(config, k)]
    if changed or saved["loss"] != choice.name:
        what = (
            ", ".join(f"{k} was {saved['config'].get(k)!r}" for k in changed) or f"loss was {saved['loss']}"
        )
        raise XdrecError(
            f"cannot resume: the interrupted run differs ({what}); repeat its options or drop --resume"
        )
    device = next(model.parameters()).device
    try:
        model.load_state_dict(load_tensors(path / "weights.safetensors", device))
        optimizer_from_tensors(
            optimizer, load_tensors(path / "optimizer.safetensors", device), saved["optimizer"]
        )
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise XdrecError(
            f"cannot resume: the saved training state does not fit this model ({first}); drop --resume"
        ) from None
    rng = load_tensors(path / "rng.safetensors")
    shuffle_gen.set_state(rng["shuffle"])
    negatives_gen.set_state(rng["negatives"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    fields = {
        k: saved[k]
        for k in ("epoch", "step", "best_metric", "best_epoch", "bad_epochs", "stopped_early", "history")
    }
    return _State(**fields), load_tensors(path / "best.safetensors")
