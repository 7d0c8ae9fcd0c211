"""The one training loop: determinism, resume equivalence, early stopping, extras, metrics, CUDA."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor

from xdrec.checkpoint import VALIDATION_WEIGHTS
from xdrec.devices import cpu_threads, resolve_device
from xdrec.errors import XdrecError
from xdrec.fit import Plan, fit
from xdrec.models.sasrec import SASRec, SASRecConfig
from xdrec.training import METRICS, STATE_DIR, Examples, TrainConfig, lr_factor, train

N_ITEMS, MAX_LEN = 40, 8


def examples(n: int = 48, seed: int = 0) -> Examples:
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, N_ITEMS + 1, (n, MAX_LEN + 1), generator=g)
    lengths = torch.randint(2, MAX_LEN + 2, (n,), generator=g)
    seqs[torch.arange(MAX_LEN + 1) < (MAX_LEN + 1 - lengths)[:, None]] = 0  # left padding
    inputs, labels = seqs[:, :-1].clone(), seqs[:, 1:].clone()
    labels[inputs == 0] = 0  # no label where there is no input
    return Examples(inputs, labels)


def new_model(seed: int = 0, dropout: float = 0.2) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(SASRecConfig(N_ITEMS, hidden=16, blocks=1, heads=2, max_len=MAX_LEN, dropout=dropout))


def config(**overrides) -> TrainConfig:
    defaults = dict(epochs=3, batch_size=16, lr=3e-3, device="cpu", threads=1, patience=10)
    return TrainConfig(**{**defaults, **overrides})


def weights(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def untimed(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in ("seconds", "sequences_per_s")} for line in lines]


def weight_metric(model: torch.nn.Module) -> float:
    """A deterministic stand-in for NDCG@10 that depends on the weights."""
    return float(model.item_embeddings()[1:].sum())


@pytest.mark.parametrize("loss", ["ce", "bce", "sampled"])
def test_same_seed_same_weights(loss: str) -> None:
    a, b, c = new_model(), new_model(), new_model()
    train(a, examples(), config(loss=loss, negatives=8), progress=False)
    train(b, examples(), config(loss=loss, negatives=8), progress=False)
    train(c, examples(), config(loss=loss, negatives=8, seed=1), progress=False)
    assert same(weights(a), weights(b))
    assert not same(weights(a), weights(c))


@pytest.mark.parametrize("loss", ["bce", "sampled"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, loss: str) -> None:
    """3 epochs in one go == 2 epochs, then a fresh process-like resume for the 3rd: identical weights."""
    cfg = config(loss=loss, negatives=8)
    whole = new_model()
    full = train(whole, examples(), cfg, validate=weight_metric, out_dir=tmp_path / "whole", progress=False)

    train(
        new_model(),
        examples(),
        config(loss=loss, negatives=8, epochs=2),
        validate=weight_metric,
        out_dir=tmp_path / "split",
        progress=False,
    )
    torch.manual_seed(123)  # whatever the global RNG holds now must not matter
    resumed_model = new_model(seed=99)  # its initial weights must be replaced by the saved ones
    resumed = train(
        resumed_model,
        examples(),
        cfg,
        validate=weight_metric,
        out_dir=tmp_path / "split",
        resume=True,
        progress=False,
    )

    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 3 and resumed.steps == full.steps
    assert same(weights(whole), weights(resumed_model))
    assert resumed.best_epoch == full.best_epoch and resumed.best_metric == full.best_metric
    assert untimed(resumed.history) == untimed(full.history)
    written = [json.loads(line) for line in (tmp_path / "split" / METRICS).read_text().splitlines()]
    assert untimed(written) == untimed(full.history)


def test_resume_refuses_a_different_run(tmp_path: Path) -> None:
    train(new_model(), examples(), config(epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(XdrecError, match=r"lr was 0\.003"):
        train(
            new_model(), examples(), config(epochs=2, lr=1e-2), out_dir=tmp_path, resume=True, progress=False
        )


def test_resume_without_a_saved_state_starts_fresh(tmp_path: Path) -> None:
    result = train(new_model(), examples(), config(epochs=1), out_dir=tmp_path, resume=True, progress=False)
    assert result.resumed_from_epoch == 0 and result.epochs_run == 1
    assert (tmp_path / STATE_DIR / "state.json").exists()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))  # nothing pickled


def test_early_stopping_keeps_the_best_weights(tmp_path: Path) -> None:
    metrics = iter([0.1, 0.3, 0.2, 0.25, 0.29, 0.28, 0.9])
    snapshots: list[dict[str, Tensor]] = []

    def validate(model: torch.nn.Module) -> float:
        assert not model.training  # validation runs in eval mode
        snapshots.append(weights(model))
        return next(metrics)

    model = new_model()
    result = train(
        model, examples(), config(epochs=7, patience=3), validate=validate, out_dir=tmp_path, progress=False
    )
    # epochs 3-5 brought nothing better than 2, but no run stops before twice its patience (epoch 6)
    assert result.stopped_early and result.epochs_run == 6
    assert result.best_epoch == 2 and result.best_metric == 0.3
    assert same(weights(model), snapshots[1])
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line["best"] for line in lines] == [True, True, False, False, False, False]
    assert {"loss", "sequences_per_s", "NDCG@10", "step"} <= lines[0].keys()


def test_a_slow_starter_is_not_stopped_on_its_first_plateau() -> None:
    # Validation flat for the first five epochs, then rising: patience 3 alone would stop at epoch 4.
    metrics = iter([0.01, 0.01, 0.01, 0.01, 0.01, 0.2, 0.3])
    result = train(
        new_model(),
        examples(),
        config(epochs=7, patience=3),
        validate=lambda _: next(metrics),
        progress=False,
    )
    assert not result.stopped_early and result.epochs_run == 7 and result.best_epoch == 7


def test_training_reduces_the_loss_and_reports_the_choice() -> None:
    result = train(new_model(dropout=0.0), examples(), config(epochs=8), progress=False)
    assert result.loss == "ce" and "auto" in result.loss_reason and "GiB" in result.loss_reason
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_metric is None and result.best_epoch == 8 and result.device == "cpu"


def test_max_steps_stops_mid_epoch() -> None:
    result = train(new_model(), examples(), config(epochs=5, max_steps=4), progress=False)
    assert result.steps == 4 and result.epochs_run == 2  # 3 batches per epoch


class CodeOnly(torch.nn.Module):
    """A model whose only clue to the label is a per-example code added to every position (extras)."""

    def __init__(self) -> None:
        super().__init__()
        self.sasrec = new_model(dropout=0.0)
        self.project = torch.nn.Linear(2, 16)

    def forward(self, inputs: Tensor, code: Tensor) -> Tensor:
        return self.sasrec(inputs, extra=self.project(code)[:, None, :])  # (B, L, D)

    def item_embeddings(self) -> Tensor:
        return self.sasrec.item_embeddings()


def test_extras_reach_forward_and_are_learnt_from() -> None:
    n = 64
    inputs = torch.zeros(n, MAX_LEN, dtype=torch.long)
    inputs[:, -1] = 5  # every example has the same input ...
    which = torch.arange(n) % 2
    labels = torch.zeros_like(inputs)
    labels[:, -1] = 10 + which  # ... and one of two labels, told apart only by the code
    code = torch.nn.functional.one_hot(which, 2).float()
    model = CodeOnly()
    result = train(
        model, Examples(inputs, labels, {"code": code}), config(epochs=40, loss="ce"), progress=False
    )
    assert result.history[-1]["loss"] < 0.1  # without the code the best possible is log 2 = 0.69
    with torch.no_grad():
        top = (model(inputs, code)[:, -1] @ model.item_embeddings().T).argmax(-1)
    assert torch.equal(top, 10 + which)


def test_a_custom_loss_replaces_the_configured_one(tmp_path: Path) -> None:
    def pull_to_item_one(hidden: Tensor, labels: Tensor, table: Tensor) -> Tensor:
        keep = labels != 0
        return (hidden[keep] - table[1]).pow(2).mean()

    result = train(
        new_model(dropout=0.0),
        examples(),
        config(epochs=4),
        loss_fn=pull_to_item_one,
        out_dir=tmp_path,
        progress=False,
    )
    assert result.loss == "pull_to_item_one" and "caller" in result.loss_reason
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    with pytest.raises(XdrecError, match="loss was pull_to_item_one"):  # resuming needs the same loss
        train(new_model(), examples(), config(epochs=5), out_dir=tmp_path, resume=True, progress=False)


def test_examples_and_config_are_checked() -> None:
    with pytest.raises(ValueError, match="must be"):
        Examples(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="rows"):
        Examples(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), {"x": torch.zeros(3)}
        )
    with pytest.raises(XdrecError, match="at least 1"):
        TrainConfig(epochs=0)


def test_progress_bar_reports_loss_speed_and_metric(capsys: pytest.CaptureFixture[str]) -> None:
    train(new_model(), examples(), config(epochs=2), validate=lambda m: 0.125, progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "seq/s" in err and "NDCG@10 0.1250" in err
    assert "full softmax" in err and "logits need" not in err  # the loss choice said in plain words
    assert ".py:" not in err  # no source locations on screen
    assert "warning" not in err  # validation stopped improving after epoch 1


def test_training_that_ends_while_validation_improves_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    scores = iter([0.1, 0.2, 0.3])
    result = train(new_model(), examples(), config(epochs=3), validate=lambda m: next(scores), progress=True)
    assert result.best_epoch == 3 and not result.stopped_early
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: training ended at --epochs 3 while validation NDCG@10 was still improving" in err
    scores = iter([0.1, 0.2, 0.3])  # a cosine schedule ends where it is laid out to: nothing to warn of
    train(new_model(), examples(), config(epochs=3, schedule="cosine"), validate=lambda m: next(scores))
    assert "warning" not in capsys.readouterr().err


def test_quiet_training_of_a_kept_model_still_warns_it_ended_improving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = iter([0.1, 0.2])
    train(new_model(), examples(), config(epochs=2), validate=lambda m: next(scores), progress=False)
    assert capsys.readouterr().err == ""  # nothing kept (a tune trial): nothing said
    scores = iter([0.1, 0.2])
    train(
        new_model(), examples(), config(epochs=2), validate=lambda m: next(scores), out_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("warning: training ended at --epochs 2") and "epoch 2/2" not in err


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(XdrecError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(XdrecError, match=r"no CUDA GPU.*--device cpu"):
            resolve_device("cuda")


def test_cpu_threads_are_restored() -> None:
    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_trains_with_bf16_autocast_and_resumes(tmp_path: Path) -> None:
    model = new_model()
    result = train(
        model,
        examples(),
        config(device="auto", epochs=2, loss="sampled", negatives=8),
        validate=weight_metric,
        out_dir=tmp_path,
        progress=False,
    )
    assert result.device.startswith("cuda") and next(model.parameters()).is_cuda
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in result.history)
    resumed = train(
        new_model(),
        examples(),
        config(device="cuda", epochs=3, loss="sampled", negatives=8),
        validate=weight_metric,
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 3
    # torch.compile must train the same model: same seed, same first-epoch loss up to kernel rounding.
    eager = train(new_model(), examples(), config(device="cuda", epochs=1), progress=False)
    compiled = train(new_model(), examples(), config(device="cuda", epochs=1, compile=True), progress=False)
    assert compiled.history[0]["loss"] == pytest.approx(eager.history[0]["loss"], rel=1e-2)


def test_lr_scaling_follows_the_global_batch() -> None:
    assert config(batch_size=512).effective_lr() == 3e-3
    assert config(batch_size=512, lr_scaling="sqrt").effective_lr() == pytest.approx(6e-3)
    assert config(batch_size=512, lr_scaling="linear").effective_lr(world_size=2) == pytest.approx(3e-3 * 8)
    with pytest.raises(XdrecError, match="lr scaling"):
        config(lr_scaling="cubic")


def test_in_batch_negatives_train_and_must_be_repeated_on_resume(tmp_path: Path) -> None:
    cfg = config(loss="sampled", negatives=4, in_batch=True, lr_scaling="sqrt", epochs=4)
    result = train(new_model(dropout=0.0), examples(), cfg, out_dir=tmp_path, progress=False)
    assert result.lr == pytest.approx(3e-3 * (16 / 128) ** 0.5) and result.world_size == 1
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    without = config(loss="sampled", negatives=4, in_batch=False, lr_scaling="sqrt", epochs=5)
    with pytest.raises(XdrecError, match="in_batch was True"):
        train(new_model(), examples(), without, out_dir=tmp_path, resume=True, progress=False)


def test_cosine_schedule_warms_up_for_an_epoch_then_decays_to_zero() -> None:
    cosine = config(schedule="cosine", epochs=4)
    factors = [lr_factor(cosine, step, 10) for step in range(40)]
    assert factors[:10] == pytest.approx([(step + 1) / 10 for step in range(10)])
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.01 and lr_factor(cosine, 40, 10) == 0.0
    assert {lr_factor(config(), step, 10) for step in range(40)} == {1.0}
    with pytest.raises(XdrecError, match="schedule"):
        config(schedule="step")


def test_a_cosine_run_resumes_exactly(tmp_path: Path) -> None:
    """The learning rate follows the step count, so a resumed cosine run is the uninterrupted one."""
    cosine = config(schedule="cosine", epochs=4)
    whole = new_model()
    full = train(whole, examples(), cosine, validate=weight_metric, progress=False)
    constant = new_model()
    train(constant, examples(), config(epochs=4), validate=weight_metric, progress=False)
    assert not same(weights(whole), weights(constant))

    stopped = replace(cosine, max_steps=2 * full.steps // 4)  # the end of epoch 2
    train(new_model(), examples(), stopped, validate=weight_metric, out_dir=tmp_path, progress=False)
    resumed_model = new_model(seed=99)
    resumed = train(
        resumed_model,
        examples(),
        cosine,
        validate=weight_metric,
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert resumed.resumed_from_epoch == 2 and resumed.steps == full.steps
    assert same(weights(whole), weights(resumed_model))


def test_a_refit_trains_again_with_more_labels_and_keeps_the_chosen_weights(tmp_path: Path) -> None:
    """fit with `refit` examples saves the model trained again from its initial weights on them for the
    epochs validation chose; the weights validation chose, kept beside it, are the model a fit without
    the refit saves (same seed)."""
    more = examples(seed=1)  # stands for the examples with the validation items added

    def plan(refit: Examples | None) -> Callable[[], Plan]:
        return lambda: Plan(new_model(), examples(), weight_metric, refit=refit)

    record = {"kind": "test", "dataset": {"name": "d", "manifest_hash": "h"}}
    cfg = config(epochs=4, schedule="cosine")
    plain = fit(plan(None), cfg, tmp_path / "plain", record, progress=False)
    refitted = fit(plan(more), cfg, tmp_path / "refitted", record, progress=False)

    assert "refit" not in plain.checkpoint.config and not (tmp_path / "plain" / VALIDATION_WEIGHTS).exists()
    assert refitted.checkpoint.config["refit"]["epochs"] == plain.training.best_epoch
    chosen = refitted.checkpoint.for_validation()
    assert same(chosen.state_dict(), plain.checkpoint.state_dict())
    assert plain.checkpoint.for_validation() == plain.checkpoint
    by_hand = new_model()
    train(by_hand, more, replace(cfg, epochs=plain.training.best_epoch), progress=False)
    assert same(refitted.checkpoint.state_dict(), weights(by_hand))
