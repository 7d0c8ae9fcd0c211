"""seed -> build -> train -> save: how every model in models/ comes to be, stage or strategy alike.

A stage (`pretrain`) or a transfer strategy only says what to train: a `Plan` (the model, its examples,
its validation, what its config.json records of its own). `fit` seeds torch before the plan is built
(so the initial weights depend on the seed alone), trains with the one loop of `xdrec.training`, and
writes the checkpoint with the fields every model records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from xdrec import distributed
from xdrec.checkpoint import (
    Checkpoint,
    as_recorded,
    finish_run,
    interrupted_epoch,
    last_run,
    read_checkpoint,
    run_dir,
    save_checkpoint,
    start_run,
)
from xdrec.errors import XdrecError
from xdrec.models.losses import LossFn
from xdrec.training import RESUME_KEYS, Examples, TrainConfig, TrainResult, cpu_copy, train
from xdrec.validation import METRIC

P = TypeVar("P")


@dataclass(frozen=True)
class Plan:
    """What one training needs. Built after seeding: construct the model before anything else random."""

    model: nn.Module
    examples: Examples
    validate: Callable[[nn.Module], float] | None
    item_counts: np.ndarray | None = None  # training popularity, for the `sampled` loss's negatives
    loss_fn: LossFn | None = None  # replaces the configured loss (e.g. a regression loss)
    record: Mapping[str, Any] = field(default_factory=dict)  # config.json fields of this model's own
    # Called with the trained model (best weights, eval mode) and its training result before saving;
    # returns more config.json fields, e.g. a setting chosen on validation with the trained model (bag's
    # blend weight, a strategy's fallback to the target model).
    finish: Callable[[nn.Module, TrainResult], Mapping[str, Any]] | None = None
    # The examples again with each user's validation item as a label too. Given (and TrainConfig.refit),
    # the model is trained once more on them from its initial weights, for the epochs validation chose,
    # and that is the model saved: it has learnt the interaction just before each test item, which
    # training on the training split never shows it. The weights validation chose are kept beside it for
    # the models built on it and the choices made later on validation (Checkpoint.for_validation).
    refit: Examples | None = None


def _continues(out_dir: Path, started: Mapping[str, Any], epoch: int | None) -> bool:
    """--resume for one model: whether its last run is this training, to be continued.

    `transfer --resume` after a kill resumes the strategy the kill interrupted; the others start over
    unless their last (finished) run was this same training, which then ends at once. An interrupted
    run of this model started on other inputs or settings is refused, naming it and what differs:
    continuing it would train something other than what was asked. (Epochs and patience may differ.)
    """
    last = last_run(out_dir)
    if last is None:
        return True  # nothing recorded: the trainer checks the saved state
    now = as_recorded(started)
    was, record = last.get("record") or {}, now["record"]
    changed = [k for k in sorted(set(was) | set(record)) if was.get(k) != record.get(k)]
    changed += [
        f"--{k.replace('_', '-')}" for k in RESUME_KEYS if last.get("train", {}).get(k) != now["train"][k]
    ]
    if not changed:
        return True
    if epoch is None:
        return False  # a finished run of other settings or inputs: nothing of it to continue
    raise XdrecError(
        f"cannot resume {out_dir.name}: its interrupted run (after epoch {epoch}) was started with other "
        f"{', '.join(changed)}: repeat its options, or drop --resume to start it over"
    )


@dataclass(frozen=True)
class Fitted:
    model: nn.Module  # holding its best weights, in eval mode
    training: TrainResult
    checkpoint: Checkpoint


def seeded(build: Callable[[], P], seed: int) -> P:
    """`build()` right after seeding torch with `seed`: the initial weights depend on the seed alone."""
    torch.manual_seed(seed)
    return build()


def train_plan(plan: Plan, config: TrainConfig, **options: Any) -> TrainResult:
    """Train `plan` with the one loop (`xdrec.training.train`); `options` are the loop's own (out_dir,
    resume, progress, on_epoch)."""
    return train(
        plan.model,
        plan.examples,
        config,
        validate=plan.validate,
        metric_name=METRIC,
        item_counts=plan.item_counts,
        loss_fn=plan.loss_fn,
        **options,
    )


def fit(
    build: Callable[[], Plan],
    config: TrainConfig,
    out_dir: Path,
    record: Mapping[str, Any],
    *,
    resume: bool | None = False,
    progress: bool = True,
) -> Fitted:
    """Seed, build the plan, train it into `out_dir`, and save models/<name>/ with `record` + the plan's.

    resume: continue the interrupted training in runs/<name>/ (`_continues`); None: when it was started
    the same way (single process only: under torchrun the ranks could not agree on it before the process
    group exists, so None means a fresh start there)."""
    epoch = interrupted_epoch(out_dir)
    started = {"record": record, "train": asdict(config)}
    if resume and not distributed.launched().distributed:
        resume = _continues(out_dir, started, epoch)
    if distributed.launched().distributed:
        resume = bool(resume)
        if distributed.is_main():
            start_run(out_dir, started, resume)
    else:
        resume = start_run(out_dir, started, resume)
    if epoch and not resume and distributed.is_main():  # say so: its state is about to go
        Console(stderr=True).print(
            f"note: starting {out_dir.name} over; its interrupted run (epoch {epoch}) is dropped"
        )
    plan = seeded(build, config.seed)
    initial = cpu_copy(plan.model) if plan.refit is not None and config.refit else None
    result = train_plan(
        plan,
        config,
        out_dir=run_dir(out_dir),  # state and live log; save_checkpoint then writes out_dir whole
        resume=resume,
        progress=progress,
    )
    finished = plan.finish(plan.model, result) if plan.finish is not None and distributed.is_main() else {}
    chosen = refitted = None
    if initial is not None:
        chosen = cpu_copy(plan.model)
        refitted = _refit(plan, initial, config, result, progress)
    if not distributed.is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        distributed.barrier()
        return Fitted(plan.model, result, read_checkpoint(out_dir))
    checkpoint = save_checkpoint(
        out_dir,
        plan.model.state_dict(),
        {
            **record,
            "train": asdict(config),
            "loss": result.loss,
            "loss_reason": result.loss_reason,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_valid": {result.metric_name: result.best_metric},
            "stopped_early": result.stopped_early,
            **({"world_size": result.world_size} if result.world_size > 1 else {}),
            **plan.record,
            **finished,
            **({"refit": refitted} if refitted is not None else {}),
        },
        validation_state=chosen,
    )
    finish_run(out_dir)
    distributed.barrier()
    return Fitted(plan.model, result, checkpoint)


def refit_note(refit: Mapping[str, Any]) -> str:
    """What `pretrain`, `transfer` and `run` say of a model's refit, from what config.json records of it."""
    return (
        f"then trained again with the validation items as labels too, for its {refit['epochs']} epochs "
        f"({refit['seconds']}s): the model kept"
    )


def _refit(
    plan: Plan, initial: Mapping[str, Tensor], config: TrainConfig, result: TrainResult, progress: bool
) -> dict[str, Any]:
    """Train plan.model again from `initial` on plan.refit for the epochs validation chose (the schedule
    laid over them); returns what config.json records of it."""
    assert plan.refit is not None
    plan.model.load_state_dict(initial)
    epochs = max(result.best_epoch, 1)
    Console(stderr=True, quiet=not (progress and distributed.is_main())).print(
        f"refitting with the validation items as labels too: {epochs} epochs", highlight=False
    )
    again = train_plan(
        replace(plan, examples=plan.refit, validate=None), replace(config, epochs=epochs), progress=progress
    )
    return {"epochs": epochs, "sequences": len(plan.refit), "seconds": round(again.seconds, 1)}
