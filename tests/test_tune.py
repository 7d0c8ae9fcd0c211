"""`xdrec tune`: a short search on tiny synthetic data that resumes, never reads test, and is picked up."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import optuna
import polars as pl
import pytest

from xdrec.data.dataset import Dataset
from xdrec.data.prepare import PrepareConfig, prepare
from xdrec.errors import XdrecError
from xdrec.models import SASRecConfig
from xdrec.strategies import STRATEGIES, TransferConfig
from xdrec.strategies.bag import BagOptions
from xdrec.strategies.mapping import MappingOptions
from xdrec.training import TrainConfig
from xdrec.tuned_settings import apply_tuned, load_tuned, settings_path, with_params
from xdrec.tuning import TuneConfig, defaults, study_path, tune
from xdrec.workspace import Workspace

FAST = TuneConfig(trials=2, epochs=2, patience=1, seed=3)


@pytest.fixture
def prepared(small_workspace: Workspace) -> Workspace:
    prepare(small_workspace, "Src", "Tgt", PrepareConfig())
    return small_workspace


def _values(result) -> list[float | None]:
    return [t.value for t in result.trials]


def test_tune_stores_the_best_trial_and_resumes(prepared: Workspace) -> None:
    first = tune(prepared, "target-only", FAST, progress=False)
    assert first.ran == 2 and [t.state for t in first.trials] == ["complete", "complete"]
    assert all(0.0 <= v <= 1.0 for v in _values(first))
    assert first.trials[0].params == defaults("target-only")  # the defaults are always tried first
    best = max(first.trials, key=lambda t: t.value or 0.0)
    data = Dataset.from_workspace(prepared)
    stored = load_tuned(prepared, data, "target-only")
    assert stored == first.best and stored is not None
    assert (stored.trial, stored.value, stored.params) == (best.number, best.value, best.params)
    assert set(stored.params) == {
        "hidden",
        "blocks",
        "heads",
        "dropout",
        "max_len",
        "lr",
        "weight_decay",
        "batch_size",
    }
    assert first.study == study_path(prepared, data.name, "target-only") and first.study.exists()

    # --trials counts every finished trial: asking for 3 runs one more, asking again runs none.
    more = tune(prepared, "target-only", TuneConfig(trials=3, epochs=2, patience=1, seed=3), progress=False)
    assert more.ran == 1 and len(more.trials) == 3 and _values(more)[:2] == _values(first)
    assert (
        tune(prepared, "target-only", TuneConfig(trials=3, epochs=2, patience=1, seed=3), progress=False).ran
        == 0
    )
    assert more.best is not None and more.best.value == max(v or 0.0 for v in _values(more))

    # A resumed search must train its trials the same way; --restart starts over.
    with pytest.raises(XdrecError, match="repeat those options"):
        tune(prepared, "target-only", TuneConfig(trials=4, epochs=3, patience=1, seed=3), progress=False)
    again = tune(prepared, "target-only", FAST, restart=True, progress=False)
    assert again.ran == 2 and len(again.trials) == 2 and _values(again) == _values(first)  # seeded


def test_a_trial_cut_off_by_a_crash_is_not_counted(prepared: Workspace) -> None:
    tune(prepared, "target-only", TuneConfig(trials=1, epochs=1, patience=1), progress=False)
    path = study_path(prepared, "Src+Tgt", "target-only")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    optuna.load_study(study_name="target-only", storage=storage).ask()  # started, never finished
    result = tune(prepared, "target-only", TuneConfig(trials=2, epochs=1, patience=1), progress=False)
    assert [t.state for t in result.trials] == ["complete", "fail", "complete"] and result.ran == 1


def test_tune_never_reads_the_test_split(prepared: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    stages: list[str] = []
    for method in ("eval_cases", "history_sequences"):
        original = getattr(Dataset, method)

        def spy(self, domain, stage, _original=original):  # type: ignore[no-untyped-def]
            stages.append(stage)
            return _original(self, domain, stage)

        monkeypatch.setattr(Dataset, method, spy)
    before = tune(prepared, "target-only", FAST, progress=False)
    assert stages and set(stages) == {"valid"}

    # Stronger: scramble every test-split item (to ids both domains have); the search must score every
    # trial exactly the same.
    data = Dataset.from_workspace(prepared)
    path = data.path / "interactions.parquet"
    table = pl.read_parquet(path)
    rng = np.random.default_rng(0)
    n_items = min(data.n_items(domain) for domain in data.domains)
    scrambled = table.with_columns(
        item_id=pl.when(pl.col("split") == "test")
        .then(pl.Series(rng.integers(1, n_items + 1, table.height), dtype=pl.Int32))
        .otherwise(pl.col("item_id"))
    )
    assert not scrambled.equals(table)
    scrambled.write_parquet(path)
    after = tune(prepared, "target-only", FAST, restart=True, progress=False)
    assert _values(after) == _values(before)


def test_stored_settings_apply_unless_given(prepared: Workspace) -> None:
    tune(prepared, "target-only", TuneConfig(trials=1, epochs=1, patience=1), progress=False)
    data = Dataset.from_workspace(prepared)
    tuned = load_tuned(prepared, data, "target-only")
    assert tuned is not None
    config = with_params(TrainConfig(), tuned.params)
    assert (config.lr, config.weight_decay, config.batch_size) == (
        tuned.params["lr"],
        tuned.params["weight_decay"],
        tuned.params["batch_size"],
    )
    assert with_params(TrainConfig(), tuned.params, keep={"lr"}).lr == TrainConfig().lr
    mapping, bag = STRATEGIES["mapping"], STRATEGIES["bag"]
    nested = mapping.with_params(
        TransferConfig(), {"lr": 0.5, "mapping.loss": "mse"}, keep={"mapping_loss"}
    )  # --mapping-loss (`mapping_loss`) keeps mapping.loss
    assert nested.train.lr == 0.5 and nested.options(MappingOptions).loss == "task"
    dotted = bag.with_params(TransferConfig(), {"bag.dropout": 0.1, "dropout": 0.4})  # bag's own, the model's
    assert dotted.options(BagOptions).dropout == 0.1 and dotted.model.dropout == 0.4
    # --bag-dropout (`bag_dropout`) keeps bag.dropout; --dropout keeps the model's alone.
    given = bag.with_params(TransferConfig(), {"bag.dropout": 0.1, "dropout": 0.4}, keep={"bag_dropout"})
    assert given.options(BagOptions).dropout == BagOptions().dropout and given.model.dropout == 0.4
    given = bag.with_params(TransferConfig(), {"bag.dropout": 0.1, "dropout": 0.4}, keep={"dropout"})
    assert given.options(BagOptions).dropout == 0.1 and given.model.dropout is None
    (same,), found = apply_tuned(prepared, data, "fusion", (TransferConfig(),))  # nothing tuned for fusion
    assert found is None and same == TransferConfig()
    # Settings chosen on another version of the dataset are not used.
    path = settings_path(prepared, data.name, "target-only")
    path.write_text(path.read_text().replace(data.manifest_hash, "0" * 16))
    assert load_tuned(prepared, data, "target-only") is None


def test_tune_user_errors(prepared: Workspace) -> None:
    with pytest.raises(XdrecError, match="cannot tune"):
        tune(prepared, "popularity", FAST, progress=False)  # type: ignore[arg-type]
    with pytest.raises(XdrecError, match="trials"):
        TuneConfig(trials=0)
    with pytest.raises(XdrecError, match="source-only"):  # a strategy needs the source model first
        tune(prepared, "fusion", FAST, progress=False)


def test_tune_strategies_saves_nothing(prepared: Workspace) -> None:
    from xdrec.embedding import embed
    from xdrec.pretraining import pretrain
    from xdrec.sequence_scorer import load_backbone

    quick = TrainConfig(epochs=1, seed=1)
    pretrain(
        prepared, domain="Src", model=SASRecConfig(0, hidden=32, heads=1), train_config=quick, progress=False
    )
    pretrain(prepared, domain="Tgt", train_config=quick, progress=False)
    embed(prepared)
    models = sorted(p.name for p in (prepared.root / "models").iterdir())
    one = TuneConfig(trials=1, epochs=1, patience=1)
    mapping = tune(prepared, "mapping", one, progress=False)
    assert mapping.best is not None and mapping.trials[0].params == defaults("mapping")
    assert set(mapping.best.params) == {"lr", "weight_decay", "batch_size", "mapping.loss"}
    # fusion builds a new backbone: its architecture is searched too, starting from the source model's.
    bag = tune(prepared, "bag", one, progress=False)  # its own options, as bag.<field>
    assert bag.trials[0].params == defaults("bag") and "bag.cold_rate" in bag.trials[0].params
    fusion = tune(prepared, "fusion", one, progress=False)
    source = load_backbone(prepared, "source-only", Dataset.from_workspace(prepared)).model.cfg
    assert fusion.trials[0].params == defaults("fusion", asdict(source))
    assert (fusion.trials[0].params["hidden"], fusion.trials[0].params["heads"]) == (32, 1)
    assert sorted(p.name for p in (prepared.root / "models").iterdir()) == models  # models/ untouched


def test_tune_cli_json_table_and_errors(prepared: Workspace) -> None:
    import json

    from typer.testing import CliRunner

    from xdrec.cli import app

    def invoke(*args: str):
        return CliRunner().invoke(app, ["--workspace", str(prepared.root), "tune", *args])

    result = invoke("--trials", "1", "--epochs", "1", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"] == "target-only" and len(doc["trials"]) == 1 and doc["ran"] == 1
    assert doc["best"]["value"] == doc["trials"][0]["value"] and doc["settings"].endswith("target-only.json")
    table = invoke("--trials", "1", "--epochs", "1")  # resumes: nothing left to run, prints the trials
    assert table.exit_code == 0 and "★0" in table.stdout and "test never read" in table.stdout
    wrong = invoke("--trials", "2", "--epochs", "2")
    assert wrong.exit_code == 1 and wrong.stderr.startswith("error:") and "--epochs 1" in wrong.stderr
    with prepared.writing(["tuning"], "tune"):  # one search at a time: a second one stops, naming the first
        busy = invoke("--trials", "1", "--epochs", "1")
    assert busy.exit_code == 1 and "`xdrec tune`" in busy.stderr and "tuning/" in busy.stderr
    unknown = invoke("popularity")  # a usage error: Typer checks the choice
    assert unknown.exit_code == 2 and "popularity" in unknown.stderr


def _store_settings(ws: Workspace, model: str, params: dict) -> None:
    from dataclasses import asdict

    from xdrec.tuned_settings import Tuned
    from xdrec.workspace import write_json

    data = Dataset.from_workspace(ws)
    tuned = Tuned(model, data.name, data.manifest_hash, "NDCG@10", 0.5, trial=7, trials=9, params=params)
    write_json(settings_path(ws, data.name, model), asdict(tuned))


def test_pretrain_transfer_and_run_use_the_stored_settings_unless_given(prepared: Workspace) -> None:
    import json

    from typer.testing import CliRunner

    from xdrec.cli import app
    from xdrec.evaluation import EvaluateConfig
    from xdrec.pipeline import RunConfig, run

    def cli(*args: str) -> dict:
        result = CliRunner().invoke(app, ["--workspace", str(prepared.root), *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout) if "--json" in args else {}

    def recorded(model: str) -> dict:
        return json.loads((prepared.model_dir(model) / "config.json").read_text())

    _store_settings(
        prepared, "target-only", {"hidden": 32, "blocks": 1, "heads": 4, "lr": 0.004, "batch_size": 64}
    )
    _store_settings(prepared, "fusion", {"lr": 0.002, "weight_decay": 0.01})
    summary = cli("pretrain", "--domain", "Tgt", "--epochs", "1", "--json")
    assert summary["tuned"]["trial"] == 7
    config = recorded("target-only")
    assert (config["model"]["hidden"], config["model"]["blocks"], config["model"]["heads"]) == (32, 1, 4)
    assert (config["train"]["lr"], config["train"]["batch_size"]) == (0.004, 64) and config["tuned"][
        "trial"
    ] == 7
    cli("pretrain", "--domain", "Tgt", "--epochs", "1", "--lr", "0.01")  # an option wins over the setting
    config = recorded("target-only")
    assert (
        config["train"]["lr"] == 0.01
        and config["train"]["batch_size"] == 64
        and config["model"]["hidden"] == 32
    )
    conflict = CliRunner().invoke(
        app, ["--workspace", str(prepared.root), "pretrain", "--domain", "Tgt", "--hidden", "30"]
    )
    assert conflict.exit_code == 1 and "do not fit the options given" in conflict.stderr  # tuned heads 4
    cli("pretrain", "--epochs", "1")  # source-only: nothing tuned, the defaults
    assert "tuned" not in recorded("source-only") and recorded("source-only")["model"]["hidden"] == 64
    cli("embed")
    rows = cli("transfer", "--strategy", "fusion", "--epochs", "1", "--json")
    assert rows[0]["tuned"]["params"] == {"lr": 0.002, "weight_decay": 0.01}
    assert (recorded("fusion")["train"]["lr"], recorded("fusion")["train"]["weight_decay"]) == (0.002, 0.01)

    # run (the CLI's seed): the same settings, so source-only is current; target-only was last trained with
    # --lr 0.01, so it is retrained, and fusion with it (it is compared with target-only); a changed
    # setting retrains exactly that model.
    logs: list[str] = []
    config = RunConfig(
        train=TrainConfig(epochs=1, seed=42),
        strategies=("fusion",),
        evaluate=EvaluateConfig(bootstrap=0, seed=42),
        tuned=True,
    )
    run(prepared, "Src", "Tgt", config, progress=False, log=logs.append)
    assert "pretrain: target-only unchanged, reused" not in logs  # it was last trained with --lr 0.01
    assert any(line.startswith("pretrain: target-only on Tgt (tuned settings: trial 7") for line in logs), (
        logs
    )
    assert (
        "transfer: fusion unchanged, reused" not in logs and "pretrain: source-only unchanged, reused" in logs
    )
    logs.clear()
    run(prepared, "Src", "Tgt", config, progress=False, log=logs.append)
    assert "pretrain: target-only unchanged, reused" in logs
    _store_settings(prepared, "fusion", {"lr": 0.003, "weight_decay": 0.01})
    logs.clear()
    run(prepared, "Src", "Tgt", config, progress=False, log=logs.append)
    assert (
        "pretrain: target-only unchanged, reused" in logs and "transfer: fusion unchanged, reused" not in logs
    )
    assert recorded("fusion")["train"]["lr"] == 0.003


def test_a_damaged_journal_keeps_the_trials_finished_before_the_damage(prepared: Workspace) -> None:
    import json

    first = tune(prepared, "target-only", TuneConfig(trials=2, epochs=1, patience=1), progress=False)
    path = study_path(prepared, "Src+Tgt", "target-only")
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    done = next(
        i for i, line in enumerate(lines) if json.loads(line) == json.loads(line) | {"op_code": 6, "state": 1}
    )
    truncated = whole[:-20]  # trial 1's last write cut off
    garbled = b"".join(
        [*lines[: done + 1], b'{"op_code": 6, "tri\xff\n', *lines[done + 1 :]]
    )  # after trial 0
    for damaged in (truncated, garbled):
        path.write_bytes(damaged)
        result = tune(prepared, "target-only", TuneConfig(trials=3, epochs=1, patience=1), progress=False)
        complete = [t for t in result.trials if t.state == "complete"]
        assert len(complete) == 3 and result.ran == 2
        assert complete[0].number == 0 and complete[0].value == first.trials[0].value  # kept, not rerun
        assert path.with_name(path.name + ".damaged").read_bytes() == damaged


@pytest.mark.parametrize("cut_off", [KeyboardInterrupt, SystemExit])  # Ctrl-C; a kill (no Optuna tell)
def test_the_defaults_cut_off_are_tried_again(
    prepared: Workspace, monkeypatch: pytest.MonkeyPatch, cut_off: type[BaseException]
) -> None:
    import xdrec.fit

    def killed(*_args, **_kwargs):
        raise cut_off

    monkeypatch.setattr(xdrec.fit, "train", killed)
    with pytest.raises(cut_off):
        tune(prepared, "target-only", TuneConfig(trials=2, epochs=1, patience=1), progress=False)
    monkeypatch.undo()
    result = tune(prepared, "target-only", TuneConfig(trials=2, epochs=1, patience=1), progress=False)
    assert [t.state for t in result.trials] == ["fail", "complete", "complete"]
    assert result.trials[1].params == defaults("target-only")


def test_a_trial_shows_its_epochs_from_its_start(prepared: Workspace) -> None:
    import optuna

    from xdrec.tuning import _objective

    objective, _ = _objective(prepared, Dataset.from_workspace(prepared), "target-only", FAST)
    shown: list[tuple[int, int, float | None]] = []
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: objective(trial, lambda *seen: shown.append(seen)), n_trials=1)
    assert [s[:2] for s in shown] == [(0, 0), (0, 1), (0, 2)][: len(shown)] and len(shown) >= 2
    assert shown[0][2] is None  # said before the first epoch ends, not only after it
    assert all(isinstance(s[2], float) for s in shown[1:])
