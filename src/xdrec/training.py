"""One training loop for every model: SASRec per domain and each transfer strategy.

A model for this loop is an `nn.Module` that maps an input batch to hidden states and has an output
embedding table:

    model(inputs (B, L) long, **extras) -> hidden (B, L, D)
    model.item_embeddings()            -> (V, D); row 0 is padding, scores = hidden @ table.T

and the training data are `Examples`: input sequences, label sequences (the next item at each position,
0 = no loss) and optional per-example tensors passed to forward by keyword (a source user vector for a
prefix, domain ids, ...).

The loop: AdamW; bf16 autocast and optional `torch.compile` on CUDA, every core on CPU; on CUDA the
examples are copied to the GPU once, so a step reads its batch there with no host copy; a validation
callback after each epoch with early stopping by patience, keeping the best weights (chosen on
validation, never test); a rich progress bar; one `metrics.jsonl` line per epoch; and, after each epoch,
a resumable training state in `<out_dir>/train_state/` (weights, optimizer, RNG states, epoch:
safetensors + JSON). Same seed, device and data give identical weights on CPU, and so does a run
interrupted and resumed.

Under `torchrun --nproc-per-node N` (see `xdrec.distributed`) the same loop is data-parallel: the model
is wrapped in `DistributedDataParallel`, every rank cuts the same seeded global batches of
N x batch_size examples and trains on its share of each (every N-th example), and each rank's loss is
weighted by its share of the batch's labelled positions, so the averaged gradient is the one a single
process would compute on the whole global batch (exactly, for the built-in losses, which are means over
labelled positions; with dropout the masks differ). Rank 0 alone prints and writes metrics and state;
validation is sharded by users and gathered (`xdrec.validation.validation_metric`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from xdrec import distributed
from xdrec.checkpoint import load_tensors, optimizer_from_tensors, optimizer_to_tensors, save_tensors
from xdrec.devices import autocast, cpu_threads, resolve_device
from xdrec.distributed import Ranks
from xdrec.errors import OptionError, XdrecError
from xdrec.models.losses import LOSSES, LossChoice, LossFn, choose_loss, make_loss
from xdrec.options import Choice, option
from xdrec.workspace import atomic_path, read_json, write_json

STATE_DIR = "train_state"
METRICS = "metrics.jsonl"
# Batches per pool of similar-length examples (see _length_bucketed_batches).
BUCKET_BATCHES = 50
# The batch size the default learning rate is tuned for: `lr_scaling` scales lr from it.
BASE_BATCH = 128
# A resumed run must repeat these, or it would not be the same run continued.
RESUME_KEYS = (
    "batch_size", "lr", "weight_decay", "loss", "negatives", "seed", "in_batch", "lr_scaling", "schedule"
)  # fmt: skip
LrScaling = Literal["none", "sqrt", "linear"]
Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    # per process: under torchrun the global batch is world_size x batch_size
    batch_size: int = option(128, "Sequences per training batch.", tune=Choice((64, 128, 256, 512)))
    lr: float = option(1e-3, "AdamW learning rate.", tune=Choice(low=1e-4, high=1e-2, log=True))
    # The paper uses none; the embedding table is most of the weights. Tuned up to ABXI's 2-3 (AdamW's
    # decoupled decay).
    weight_decay: float = option(0.0, "AdamW weight decay.", tune=Choice(low=1e-6, high=3.0, log=True))
    loss: str = "auto"  # auto | ce | bce | sampled (see xdrec.models.losses)
    negatives: int = 1024  # popularity negatives per batch for `sampled` (beside the in-batch ones)
    in_batch: bool = True  # `sampled` only: the batch's other labels are negatives too (under torchrun: each
    # process's own batch)
    # Larger batches take fewer steps per epoch: scale lr by (global batch / BASE_BATCH) ** 1/2 or 1.
    lr_scaling: LrScaling = "none"
    # constant: lr throughout; cosine: lr warms up over the first epoch, then decays to 0 at `epochs`.
    schedule: Schedule = "constant"
    patience: int = 5  # epochs without a better validation metric before stopping (see min_epochs)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the model (pays off on CUDA for long runs)
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs, benchmarks)
    threads: int | None = None  # CPU threads; None: every core (or OMP_NUM_THREADS), restored afterwards
    # Where the plan gives its examples again with each user's validation item as a label too
    # (`fit.Plan.refit`: the SASRecs, finetune, fusion, joint), train once more from the initial weights
    # for the epochs validation chose, and keep that model.
    refit: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.negatives < 1:
            raise OptionError("epochs, batch size, patience and negatives must be at least 1")
        if not 0 < self.lr < math.inf:  # also refuses nan
            raise OptionError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise OptionError(f"--weight-decay must be 0 or a positive number, got {self.weight_decay}")
        if self.loss != "auto" and self.loss not in LOSSES:
            raise XdrecError(f"unknown loss {self.loss!r}: choose auto, {', '.join(LOSSES)}")
        if self.schedule not in get_args(Schedule):
            raise XdrecError(f"unknown schedule {self.schedule!r}: choose {', '.join(get_args(Schedule))}")
        if self.lr_scaling not in get_args(LrScaling):
            raise XdrecError(
                f"unknown lr scaling {self.lr_scaling!r}: choose {', '.join(get_args(LrScaling))}"
            )

    def effective_lr(self, world_size: int = 1) -> float:
        """The learning rate the optimizer uses: `lr`, scaled for the global batch by `lr_scaling`."""
        power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[self.lr_scaling]
        return self.lr if power == 0.0 else self.lr * (self.batch_size * world_size / BASE_BATCH) ** power


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The share of the learning rate that optimizer step `step` (from 0) takes under `config.schedule`."""
    if config.schedule == "constant":
        return 1.0
    warmup = max(steps_per_epoch, 1)
    if step < warmup:
        return (step + 1) / warmup
    decay = max(config.epochs * steps_per_epoch - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / decay)))


def cpu_copy(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights as they are now, copied to the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def min_epochs(config: TrainConfig) -> int:
    """The epochs every run trains before early stopping may end it: twice its patience."""
    return min(2 * config.patience, config.epochs)


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
    world_size: int = 1  # processes that trained together (torchrun); 1 without
    lr: float = 0.0  # the learning rate used (TrainConfig.effective_lr)


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
    loss_fn: `loss(hidden, labels, table) -> scalar` replacing config.loss (e.g. a regression loss); under
             torchrun it must be a mean over the labelled positions, like the built-in losses.
    """
    started = time.perf_counter()
    run = _Run.start(model, examples, config, item_counts, loss_fn)
    run.restore(out_dir, resume)
    resumed_from = run.state.epoch
    batches = _Batches(examples, config.batch_size, run.ranks, run.device)
    console = Console(stderr=True, quiet=not (progress and run.ranks.main))
    workers = f" x {run.ranks.world_size} processes" if run.ranks.distributed else ""
    console.print(
        f"training on {run.device}{workers}: {len(examples):,} sequences, {run.n_items:,} items, "
        f"{run.choice.words}",
        highlight=False,
    )
    if resumed_from:
        console.print(f"resumed after epoch {resumed_from}", highlight=False)
    with cpu_threads(config.threads), _progress_bar(console, progress and run.ranks.main) as bar:
        for epoch in range(run.state.epoch + 1, config.epochs + 1):
            if run.finished():
                break
            task = bar.add_task(
                f"epoch {epoch}/{config.epochs}", total=len(batches), loss="", speed="", metric=""
            )
            t0 = time.perf_counter()
            mean_loss, seen = run.train_epoch(batches, bar, task)
            seconds = time.perf_counter() - t0
            run.check_finite(epoch, mean_loss)  # before anything is saved: a diverged run replaces nothing
            metric = _validated(model, validate)
            improved = run.end_epoch(epoch, metric)
            line = {
                "epoch": epoch,
                "step": run.state.step,
                "loss": mean_loss,
                "seconds": round(seconds, 3),
                "sequences_per_s": round(seen / max(seconds, 1e-9), 1),
                metric_name: metric,
                "best": improved,
            }
            run.state.history.append(line)
            shown = "" if metric is None else f"{metric_name} {metric:.4f}" + (" *" if improved else "")
            bar.update(task, loss=f"{mean_loss:.4f}", speed=f"{line['sequences_per_s']:,.0f}", metric=shown)
            run.save(out_dir)
            if on_epoch is not None:
                on_epoch(line)
    if run.state.stopped_early:
        console.print(
            f"stopped early: no better {metric_name} for {config.patience} epochs "
            f"(best epoch {run.state.best_epoch} of {run.state.epoch})",
            highlight=False,
        )
    elif still_improving(run.state, config) and (progress or out_dir is not None):
        # A warning about a model that is kept (out_dir): said under --quiet too. A tune trial (no out_dir,
        # no progress) keeps no model: the search, not this line, decides its epochs.
        Console(stderr=True, quiet=not run.ranks.main).print(
            f"warning: training ended at --epochs {config.epochs} while validation {metric_name} was still "
            "improving (best at the last epoch): more --epochs may give a better model",
            highlight=False,
            soft_wrap=True,  # one line, also in a log file
        )
    run.finish()
    state = run.state
    return TrainResult(
        loss=run.choice.name,
        loss_reason=run.choice.reason,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        best_metric=state.best_metric,
        metric_name=metric_name,
        stopped_early=state.stopped_early,
        resumed_from_epoch=resumed_from,
        steps=state.step,
        seconds=time.perf_counter() - started,
        device=str(run.device),
        history=list(state.history),
        world_size=run.ranks.world_size,
        lr=config.effective_lr(run.ranks.world_size),
    )


def still_improving(state: _State, config: TrainConfig) -> bool:
    """Whether training ran out of epochs (not patience, not --max-steps) with its last epoch the best,
    on a constant learning rate (a schedule ends where it is laid out to end)."""
    return (
        config.schedule == "constant"
        and state.epoch == config.epochs
        and state.best_epoch == state.epoch
        and state.best_metric is not None
        and (config.max_steps is None or state.step < config.max_steps)
    )


def _validated(model: nn.Module, validate: Callable[[nn.Module], float] | None) -> float | None:
    """The validation metric of the model in eval mode (None without a callback); back to train mode."""
    if validate is None:
        return None
    model.eval()
    with torch.no_grad():
        metric = float(validate(model))
    model.train()
    return metric


@dataclass
class _Run:
    """One call of `train`: the model and what updates it, and the resumable state it advances."""

    model: nn.Module
    config: TrainConfig
    ranks: Ranks
    device: torch.device
    n_items: int
    choice: LossChoice
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    shuffle_gen: torch.Generator  # the same on every rank: all ranks cut the same global batches
    negatives_gen: torch.Generator  # on the training device: negatives are drawn where they are used
    forward: Callable[..., Tensor] | None = None  # the model, wrapped for DDP / torch.compile
    state: _State = field(default_factory=_State)
    best: dict[str, Tensor] | None = None  # the best epoch's weights, on the CPU

    @classmethod
    def start(
        cls,
        model: nn.Module,
        examples: Examples,
        config: TrainConfig,
        item_counts: np.ndarray | None,
        loss_fn: LossFn | None,
    ) -> _Run:
        ranks, device = distributed.setup(resolve_device(config.device))
        torch.manual_seed(config.seed + ranks.rank)  # dropout draws from the global generator
        model.to(device)
        n_items = model.item_embeddings().shape[0] - 1
        shuffle_gen = torch.Generator().manual_seed(config.seed)
        negatives_gen = torch.Generator(device=device if device.type == "cuda" else "cpu")
        negatives_gen.manual_seed(config.seed + 1)
        if loss_fn is None:
            global_batch = config.batch_size * ranks.world_size
            choice = choose_loss(config.loss, n_items, global_batch, examples.inputs.shape[1])
            loss_fn = make_loss(
                choice.name,
                negatives_gen,
                negatives=config.negatives,
                item_counts=item_counts,
                n_items=n_items,
                in_batch=config.in_batch,
            )
        else:
            name = getattr(loss_fn, "__name__", "custom")
            choice = LossChoice(name, f"{name}: the caller's own loss function")
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.effective_lr(ranks.world_size),
            betas=(0.9, 0.98),
            weight_decay=config.weight_decay,
            # One fused kernel instead of a dozen per tensor: ~10x faster updates of a large item table.
            fused=_fused_adamw_supported(device),
        )
        return cls(
            model, config, ranks, device, n_items, choice, loss_fn, optimizer, shuffle_gen, negatives_gen
        )

    def restore(self, out_dir: Path | None, resume: bool) -> None:
        """Load out_dir's saved state when resuming (a fresh run deletes it); then wrap the model."""
        if out_dir is not None and not resume and self.ranks.main:
            # A fresh run: a stale state must not be what a later --resume continues.
            shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
        distributed.barrier()  # a state being written or removed by rank 0 is never read half-way
        if resume and out_dir is not None and (out_dir / STATE_DIR).exists():
            self._load(out_dir / STATE_DIR)
        forward: Callable[..., Tensor] = self.model
        if self.ranks.distributed:  # after loading: DDP starts every rank from rank 0's weights
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(self.model, device_ids=ids)
        self.forward = torch.compile(forward) if self.config.compile else forward

    def finished(self) -> bool:
        limit = self.config.max_steps
        return self.state.stopped_early or (limit is not None and self.state.step >= limit)

    def train_epoch(self, batches: _Batches, bar: Progress, task: int) -> tuple[float, int]:
        """One pass over the shuffled examples; returns the mean batch loss and the sequences seen."""
        assert self.forward is not None
        self.model.train()
        # Summed on the device: calling .item() every step would wait for the GPU each time.
        total, steps, seen = torch.zeros((), device=self.device), 0, 0
        lr = self.config.effective_lr(self.ranks.world_size)
        for batch in batches.epoch(self.shuffle_gen):
            for group in self.optimizer.param_groups:
                group["lr"] = lr * lr_factor(self.config, self.state.step, len(batches))
            with autocast(self.device):
                hidden = self.forward(batch.inputs, **batch.extras)  # (B, L, D)
                loss = self.loss_fn(hidden, batch.labels, self.model.item_embeddings())
            if batch.weight != 1.0:
                loss = loss * batch.weight
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
            steps, seen, self.state.step = steps + 1, seen + batch.size, self.state.step + 1
            if steps % 20 == 0 and not bar.disable:  # .item() waits for the GPU: only for a shown bar
                bar.update(task, completed=steps, loss=f"{total.item() / steps:.4f}")
            if self.finished():
                break
        bar.update(task, completed=steps)
        if self.ranks.distributed:  # the weighted losses of the ranks sum to world_size x the batch's mean
            return distributed.all_sum([total.item()])[0] / self.ranks.world_size / max(steps, 1), seen
        return (total.item() / max(steps, 1)), seen

    def check_finite(self, epoch: int, mean_loss: float) -> None:
        """Stop with an error when training diverged (a non-finite loss or weight): such weights score
        every item nan, and a saved model would silently feed embed, transfer and evaluate."""
        bad = [
            k for k, v in self.model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()
        ]
        if math.isfinite(mean_loss) and not bad:
            return
        what = (
            f"loss {mean_loss}" if not math.isfinite(mean_loss) else f"{len(bad)} weight tensor(s) not finite"
        )
        raise XdrecError(
            f"training diverged in epoch {epoch} ({what}, learning rate {self.config.lr:g}): nothing was "
            "saved and the previous model is kept; lower --lr (or raise --weight-decay) and train again"
        )

    def end_epoch(self, epoch: int, metric: float | None) -> bool:
        """Record the epoch's validation: keep the best weights, count epochs without improvement;
        returns whether this epoch is the best so far."""
        state = self.state
        state.epoch = epoch
        improved = metric is None or state.best_metric is None or metric > state.best_metric
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
            self.best = cpu_copy(self.model)
        else:
            state.bad_epochs += 1
            # A slow starter can sit on a plateau for its first epochs while its loss still falls
            # (`joint` did for five): no run is judged before it has had twice its patience.
            state.stopped_early = state.bad_epochs >= self.config.patience and epoch >= min_epochs(
                self.config
            )
        return improved

    def finish(self) -> None:
        if self.best is not None:
            self.model.load_state_dict(self.best)
        self.model.eval()

    # ------------------------------------------------------------------------------ resumable state

    def _rng_states(self) -> dict[str, Tensor]:
        rng = {"negatives": self.negatives_gen.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return rng

    def save(self, out_dir: Path | None) -> None:
        """Write train_state/ and metrics.jsonl (rank 0; every rank's RNG states go into the state).

        Every rank returns once the state is on disk: a resume that follows reads the same epoch on all.
        """
        if out_dir is None:
            return
        rng = {"shuffle": self.shuffle_gen.get_state(), **self._rng_states()}
        if self.ranks.distributed:  # each rank draws its own dropout masks (and bce negatives)
            states = distributed.gather({k: v.numpy().tobytes() for k, v in self._rng_states().items()})
            for rank, own in enumerate(states[1:], start=1):
                rng |= {
                    f"{k}.{rank}": torch.frombuffer(bytearray(v), dtype=torch.uint8) for k, v in own.items()
                }
        if self.ranks.main:
            self._write(out_dir, rng)
        distributed.barrier()

    def _write(self, out_dir: Path, rng: dict[str, Tensor]) -> None:
        opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
        model = self.model.state_dict()
        meta = {"config": asdict(self.config), "loss": self.choice.name, "optimizer": opt_meta}
        with atomic_path(out_dir / STATE_DIR) as tmp:  # the whole directory at once: never half a state
            tmp.mkdir()
            save_tensors(tmp / "weights.safetensors", model)
            save_tensors(tmp / "best.safetensors", self.best if self.best is not None else model)
            save_tensors(tmp / "optimizer.safetensors", opt_tensors)
            save_tensors(tmp / "rng.safetensors", rng)
            write_json(tmp / "state.json", meta | asdict(self.state) | {"world_size": self.ranks.world_size})
        _write_metrics(out_dir / METRICS, self.state.history)

    def _load(self, path: Path) -> None:
        saved = read_json(path / "state.json")
        defaults = TrainConfig()
        changed = [
            k for k in RESUME_KEYS if saved["config"].get(k, getattr(defaults, k)) != getattr(self.config, k)
        ]
        if saved.get("world_size", 1) != self.ranks.world_size:
            changed.append("world_size")
            saved["config"]["world_size"] = saved.get("world_size", 1)
        if changed or saved["loss"] != self.choice.name:
            what = (
                ", ".join(f"{k} was {saved['config'].get(k)!r}" for k in changed)
                or f"loss was {saved['loss']}"
            )
            raise XdrecError(
                f"cannot resume {path.parent.name}: the interrupted run differs ({what}); repeat its options "
                "or drop --resume"
            )
        own = "" if self.ranks.main else f".{self.ranks.rank}"
        try:
            self.model.load_state_dict(load_tensors(path / "weights.safetensors", self.device))
            optimizer_from_tensors(
                self.optimizer, load_tensors(path / "optimizer.safetensors", self.device), saved["optimizer"]
            )
            rng = load_tensors(path / "rng.safetensors")
            self.shuffle_gen.set_state(rng["shuffle"])
            # A CPU generator's state does not fit a CUDA one (a run moved between devices).
            self.negatives_gen.set_state(rng["negatives" + own])
            torch.set_rng_state(rng["torch" + own])
            if "cuda" + own in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda" + own])
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise XdrecError(
                f"cannot resume {path.parent.name}: the saved training state does not fit this model "
                f"({first}); drop --resume"
            ) from None
        fields = {
            k: saved[k]
            for k in ("epoch", "step", "best_metric", "best_epoch", "bad_epochs", "stopped_early", "history")
        }
        self.state, self.best = _State(**fields), load_tensors(path / "best.safetensors")


# ---------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class _Batch:
    inputs: Tensor  # (b, width) on the training device
    labels: Tensor
    extras: dict[str, Tensor]
    size: int  # sequences in the global batch (all ranks together)
    weight: float  # this rank's share of the global batch's labelled positions, x world_size


class _Batches:
    """The examples where the steps read them, cut into seeded global batches and each rank's share.

    On CUDA the examples are copied to the GPU once and each epoch's batch order once per epoch, so a step
    gathers its rows on the GPU with no host copy and no sync. On CPU the rows are gathered in place.
    """

    def __init__(self, examples: Examples, batch_size: int, ranks: Ranks, device: torch.device) -> None:
        self.ranks = ranks
        self.global_batch = batch_size * ranks.world_size
        self.n = len(examples)
        self.width = examples.inputs.shape[1]
        self.device = device
        store = device if device.type == "cuda" else torch.device("cpu")
        self.inputs = examples.inputs.to(store)
        self.labels = examples.labels.to(store)
        self.extras = {k: v.to(store) for k, v in examples.extras.items()}
        # On the CPU: batch widths without a device sync. A row's inputs and labels are each right-aligned,
        # so the columns they occupy together are as many as the wider of the two (a bag's labels, the
        # whole target history, can be wider than its inputs).
        self.lengths = torch.maximum((examples.inputs != 0).sum(1), (examples.labels != 0).sum(1))
        self.label_counts = (examples.labels != 0).sum(1) if ranks.distributed else None

    def __len__(self) -> int:
        return -(-self.n // self.global_batch)

    def epoch(self, generator: torch.Generator) -> Iterator[_Batch]:
        order = _length_bucketed_batches(self.lengths, self.global_batch, generator)
        on_device = self.inputs.device.type == "cuda"
        if on_device:  # one copy of the epoch's order instead of one per step
            flat = torch.cat(order).to(self.device, non_blocking=True)
            offsets = np.cumsum([0] + [len(b) for b in order])
        for i, idx in enumerate(order):
            # Drop the columns that are padding in every row of the (global) batch: left padding and
            # positions counted from the most recent item make this exact (the model is padding-
            # invariant), and most histories are much shorter than max_len. Widths are rounded up to a
            # multiple of 8 to bound the number of shapes torch.compile and the GPU kernels see.
            width = min(self.width, -(-max(int(self.lengths[idx].max()), 1) // 8) * 8)
            rows = flat[offsets[i] : offsets[i + 1]] if on_device else idx
            weight = 1.0
            if self.ranks.distributed:
                rows, weight = self._share(idx, rows)
            yield _Batch(
                inputs=self.inputs[rows, -width:],
                labels=self.labels[rows, -width:],
                extras={k: v[rows] for k, v in self.extras.items()},
                size=len(idx),
                weight=weight,
            )

    def _share(self, idx: Tensor, rows: Tensor) -> tuple[Tensor, float]:
        """This rank's rows of a global batch (every world_size-th one) and its loss weight.

        The weight is world_size x (its labelled positions / the batch's): DDP averages the ranks'
        gradients, so the result is the gradient of the mean over the whole batch's labelled positions.
        A rank left without a row (a last batch smaller than world_size) still steps, on one row weighted 0.
        """
        assert self.label_counts is not None
        rank, world = self.ranks.rank, self.ranks.world_size
        if rank >= len(idx):
            return rows[:1], 0.0
        total = int(self.label_counts[idx].sum())
        own = int(self.label_counts[idx[rank::world]].sum())
        return rows[rank::world], own * world / max(total, 1)


def _length_bucketed_batches(lengths: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled batches of example indices, each drawn from examples of similar length.

    The shuffled order is cut into pools of BUCKET_BATCHES batches; each pool is sorted by length and cut
    into batches, and the batches are shuffled. Batches stay random (and seeded) but have little padding.
    """
    order = torch.randperm(len(lengths), generator=generator)
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
