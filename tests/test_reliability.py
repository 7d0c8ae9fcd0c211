"""Reliability: the error boundary, one writer per area, leftovers swept, output for scripts.

Each test here failed on the code before it: a traceback, a silent success, a file left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

import xdrec
import xdrec.pipeline
from xdrec.cli import app
from xdrec.data.synthetic import SyntheticConfig, write_raw
from xdrec.errors import XdrecError
from xdrec.workspace import Workspace, atomic_path, sweep

runner = CliRunner()
SYNTHETIC = SyntheticConfig(n_users=400)
SOURCE, TARGET = SYNTHETIC.source_domain, SYNTHETIC.target_domain
TRAIN = ("--device", "cpu", "--epochs", "1")
ROOT = os.geteuid() == 0  # root writes through any permission bits


def invoke(ws: Workspace | Path, *args: str) -> Result:
    root = ws.root if isinstance(ws, Workspace) else ws
    return runner.invoke(app, ["--workspace", str(root), *args])


def one_error_line(result: Result, *fragments: str, code: int = 1) -> str:
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Prepared, source-only trained (1 epoch) and embedded: what the readers below read."""
    ws = Workspace(tmp_path_factory.mktemp("trained") / "ws")
    write_raw(ws.raw_dir, SYNTHETIC)
    for args in (("prepare", SOURCE, TARGET, "-q"), ("pretrain", *TRAIN, "-q"), ("embed", "--device", "cpu")):
        result = invoke(ws, *args)
        assert result.exit_code == 0, result.output
    return ws


@pytest.fixture
def copy(trained: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(trained.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


# --- the error boundary ---------------------------------------------------------------------


def test_workspace_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for command in (["overlap"], ["prepare", "A", "B"]):
        one_error_line(invoke(tmp_path / "file", *command), "is a file, not a folder")


def test_truncated_parquet_names_the_file_and_the_fix(copy: Workspace) -> None:
    path = copy.dataset_dir(f"{SOURCE}+{TARGET}") / "interactions.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_error_line(invoke(copy, "overlap"), str(path), "is damaged", "xdrec --workspace", "prepare")


def test_truncated_embeddings_name_the_file_and_the_fix(copy: Workspace) -> None:
    path = copy.embeddings("source-only")
    path.write_bytes(path.read_bytes()[:200])
    one_error_line(invoke(copy, "transfer", "--strategy", "mapping", *TRAIN), str(path), "embed")


def test_permission_error_mid_command_is_one_line(copy: Workspace, monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(copy.reports_dir / "x" / "report.json"))

    monkeypatch.setattr(xdrec.pipeline, "save_report", refuse)
    # -q: no progress bars before it (the models were ranked when saving the report failed)
    line = one_error_line(
        invoke(copy, "evaluate", "--bootstrap", "0", "--device", "cpu", "-q"), "report.json"
    )
    assert "chmod" in line


def test_an_unwritable_output_folder_fails_before_the_work(copy: Workspace, monkeypatch) -> None:
    """`evaluate` used to evaluate every model, then die writing the report: check first."""
    reports = copy.reports_dir
    reports.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != reports and real_access(p, mode))
    called = []
    monkeypatch.setattr(xdrec.pipeline, "evaluate_scorers", lambda *a, **k: called.append(1))
    one_error_line(invoke(copy, "evaluate", "--device", "cpu"), f"cannot write in {reports}", "chmod")
    assert not called


@pytest.mark.skipif(ROOT, reason="root writes through permission bits")
def test_read_only_workspace_fails_before_training(copy: Workspace) -> None:
    os.chmod(copy.root / "models", 0o555)
    try:
        one_error_line(invoke(copy, "pretrain", *TRAIN), "cannot write in")
    finally:
        os.chmod(copy.root / "models", 0o755)


def test_usage_errors_are_one_line_exit_2_naming_the_option() -> None:
    one_error_line(runner.invoke(app, ["overlap", "--no-such"]), "--no-such", "--help", code=2)
    one_error_line(runner.invoke(app, ["pretrain", "--epochs", "0"]), "--epochs", code=2)
    one_error_line(runner.invoke(app, ["prepare", "A", "B", "--t1", "5"]), "--t1", "timestamp", code=2)


def test_version_and_workspace_after_the_command(trained: Workspace) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"xdrec {xdrec.__version__}"
    result = runner.invoke(app, ["overlap", "--json", "--workspace", str(trained.root)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["domains"].keys() == {SOURCE, TARGET}
    result = runner.invoke(app, ["overlap", f"--workspace={trained.root}"])
    assert result.exit_code == 0, result.output


def test_prepare_quiet_prints_nothing(copy: Workspace) -> None:
    result = invoke(copy, "prepare", SOURCE, TARGET, "-q")
    assert result.exit_code == 0 and result.stdout == ""


def test_json_error_text_reads_well(tmp_path: Path) -> None:
    (tmp_path / "workspace.json").write_text(
        '{"dataset": "a\tb"}'
    )  # json says "Invalid control character at"
    line = one_error_line(invoke(tmp_path, "overlap"), "workspace.json", "is not valid JSON", "line 1 column")
    assert " at at " not in line


# --- one writer per area ---------------------------------------------------------------------


def test_a_second_writer_stops_naming_the_first_and_readers_go_on(copy: Workspace) -> None:
    with copy.writing(["models"], "pretrain"):
        line = one_error_line(invoke(copy, "pretrain", *TRAIN), "`xdrec pretrain`", f"pid {os.getpid()}")
        assert "models/" in line
        assert invoke(copy, "overlap").exit_code == 0  # readers take no lock
        assert invoke(copy, "prepare", SOURCE, TARGET, "-q").exit_code == 0  # nor other areas' writers
    assert invoke(copy, "embed", "--device", "cpu").exit_code == 0


def test_the_lock_goes_with_its_holder(tmp_path: Path) -> None:
    """flock: a killed holder's lock is released by the kernel; no stale lock file to delete by hand."""
    ws = Workspace(tmp_path / "ws")
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies without letting go
        with ws.writing(["models"], "pretrain"):
            os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    with ws.writing(["models"], "pretrain"):
        pass


# --- leftovers ---------------------------------------------------------------------


def test_a_writer_sweeps_what_a_killed_writer_left(copy: Workspace) -> None:
    raw = copy.raw_dir
    leftovers = [raw / f".xdrec-tmp-{SOURCE}.parquet.abc123.tmp", raw / f".xdrec-tmp-{SOURCE}.k2j3"]
    leftovers[0].write_bytes(b"x" * 100)
    leftovers[1].mkdir()
    (leftovers[1] / "staging.parquet").write_bytes(b"x")
    dataset_tmp = copy.root / "datasets" / f".xdrec-tmp-{SOURCE}+{TARGET}.x1y2.tmp"
    dataset_tmp.mkdir()
    with copy.writing(["raw", "datasets"], "run"):
        assert not any(p.exists() for p in (*leftovers, dataset_tmp))
    assert copy.raw(SOURCE).exists()


def test_a_folder_moved_aside_and_never_replaced_is_put_back(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "fusion"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    folder.rename(tmp_path / "models" / ".xdrec-old-fusion")  # a kill between atomic_path's two renames
    sweep(tmp_path / "models")
    assert (folder / "config.json").exists() and not (tmp_path / "models" / ".xdrec-old-fusion").exists()


def test_atomic_path_replaces_a_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "d"
    for version in ("old", "new"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "v").write_text(version)
    assert (target / "v").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_demo_reuses_one_folder_in_the_temp_dir(monkeypatch, tmp_path: Path) -> None:
    seen: list[Path] = []

    def fake_demo(workspace: Workspace, **_kwargs):
        seen.append(workspace.root)
        workspace.raw_dir.mkdir(exist_ok=True)
        raise XdrecError("stop here")

    monkeypatch.setattr(xdrec.pipeline, "demo", fake_demo)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("XDREC_WORKSPACE", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    for _ in range(2):
        one_error_line(runner.invoke(app, ["demo"]), "stop here")
    assert seen[0] == seen[1] and seen[0].parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [seen[0].name]


def test_the_suite_keeps_temp_folders_of_failed_tests_only(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"


# --- output for scripts ---------------------------------------------------------------------


def test_tables_are_not_cut_to_80_columns_in_a_pipe(copy: Workspace) -> None:
    result = invoke(copy, "evaluate", "--k", "10", "--k", "20", "--bootstrap", "20", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    header = next(line for line in result.stdout.splitlines() if "segment" in line)
    assert {"HR@10", "NDCG@10", "HR@20", "NDCG@20", "Recall@20", "MRR"} <= set(header.split())
    assert "*" in result.stdout and "marked *" in result.stdout  # "best in bold" means nothing in a file


def test_plot_labels_every_bar_and_says_what_the_error_bars_are(copy: Workspace) -> None:
    from xdrec.evaluation import EvaluateConfig
    from xdrec.pipeline import evaluate
    from xdrec.report import plot_figure

    report, _ = evaluate(copy, EvaluateConfig(bootstrap=20, device="cpu"))
    figure = plot_figure(report)
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.texts]
    assert len(labels) == report.rows.height and all(labels)
    assert "bootstrap CI" in axes.get_ylabel()


# --- a model folder is one unit -------------------------------------------------------------------------


def test_a_killed_retrain_leaves_the_old_model_folder_whole(copy: Workspace, monkeypatch) -> None:
    """The trainer logs into runs/<name>/; models/<name>/ changes only when the new one is complete."""
    import xdrec.fit

    folder = copy.model_dir("source-only")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # stands for the kill that ends the run before its checkpoint is written

    monkeypatch.setattr(xdrec.fit, "save_checkpoint", killed)
    result = invoke(copy, "pretrain", "--device", "cpu", "--epochs", "2", "--lr", "0.01")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert (copy.run_dir("source-only") / "train_state").is_dir()  # what --resume continues
    monkeypatch.undo()
    rerun = invoke(copy, "pretrain", "--device", "cpu", "--epochs", "1", "-q")
    assert rerun.exit_code == 0 and "note: starting source-only over" in rerun.stderr  # not silently


def test_a_model_folder_is_replaced_in_one_step(tmp_path: Path) -> None:
    import torch

    from xdrec.checkpoint import read_checkpoint, run_dir, save_checkpoint

    model = tmp_path / "models" / "m"
    run_dir(model).mkdir(parents=True)
    (run_dir(model) / "metrics.jsonl").write_text('{"epoch": 1}\n')
    save_checkpoint(model, {"w": torch.zeros(2)}, {"kind": "k", "dataset": {}})
    assert {p.name for p in model.iterdir()} == {"model.safetensors", "config.json", "metrics.jsonl"}
    (model / "stray").write_text("from an older layout")
    save_checkpoint(model, {"w": torch.ones(2)}, {"kind": "k", "dataset": {}})
    assert not (model / "stray").exists() and read_checkpoint(model).state_dict()["w"].sum() == 2
    assert sorted(p.name for p in model.parent.iterdir()) == ["m"]  # no temp or .old folder left


# --- the example script --------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "books_to_movies.sh"


def test_the_example_takes_other_domains_and_an_epoch_cap(tmp_path: Path) -> None:
    """A stub `xdrec` records the commands: the domains, the epoch cap and a path with a space reach them."""
    import subprocess

    import polars as pl

    log, bin_dir, ws = tmp_path / "calls.txt", tmp_path / "bin", tmp_path / "my ws"
    bin_dir.mkdir()
    (bin_dir / "xdrec").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    (bin_dir / "xdrec").chmod(0o755)
    users = ws / "datasets" / "Food+Kitchen"
    users.mkdir(parents=True)
    pl.DataFrame({"user": ["u1", "u2"], "cold": [False, True]}).write_parquet(users / "users.parquet")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SOURCE_DOMAIN": "Food",
        "TARGET_DOMAIN": "Kitchen",
        "EPOCHS": "3",
        "SOURCE": str(tmp_path / "files"),
        "XDREC_WORKSPACE": str(ws),
    }
    subprocess.run(["bash", str(EXAMPLE)], env=env, check=True, capture_output=True)
    calls = log.read_text().splitlines()
    assert calls[0] == f"fetch Food Kitchen --source {tmp_path / 'files'}"
    assert calls[1].startswith("prepare Food Kitchen")
    assert [c.split()[0] for c in calls if "--epochs 3" in c] == ["pretrain", "pretrain", "transfer"]
    assert "pretrain --domain Kitchen --device auto --epochs 3" in calls
    assert calls[-1] == "recommend u2 --k 10"


def test_domains_without_a_shared_user_are_warned_about(tmp_path: Path) -> None:
    from tests.conftest import random_raw

    ws = Workspace(tmp_path / "ws")
    ws.raw_dir.mkdir(parents=True)
    random_raw("Src", 200, 100, 3000, seed=1, user_prefix="A").write_parquet(ws.raw("Src"))
    random_raw("Tgt", 200, 100, 3000, seed=2, user_prefix="B").write_parquet(ws.raw("Tgt"))
    for args in (("prepare", "Src", "Tgt", "--min-item", "2"), ("overlap",)):
        result = invoke(ws, *args)
        assert result.exit_code == 0, result.output
        assert "warning: no user is active in both domains" in result.stderr


# --- no silent fallbacks ---------------------------------------------------------------------------------

EVAL = ("evaluate", "--device", "cpu", "--bootstrap", "0")


def absent_of(ws: Workspace, *args: str) -> dict[str, dict]:
    result = invoke(ws, *EVAL, "--json", *args)
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["reports"]
    return {a["model"]: a for a in report["absent"]}


def test_evaluate_before_training_names_every_missing_model(copy: Workspace) -> None:
    absent = absent_of(copy)
    assert set(absent) == {"target-only", "mapping", "finetune", "bag"}  # what the default pipeline trains
    assert absent["target-only"]["fix"] == f"xdrec pretrain --domain {TARGET}"
    assert absent["bag"] == {"model": "bag", "reason": "not trained", "fix": "xdrec transfer --strategy bag"}
    table = invoke(copy, *EVAL)
    assert "not shown: bag, not trained (`xdrec transfer --strategy bag`)" in table.stdout
    saved = json.loads((copy.reports_dir / f"{SOURCE}+{TARGET}" / TARGET / "report.json").read_text())
    assert {a["model"] for a in saved["absent"]} == set(absent)
    one_error_line(invoke(copy, *EVAL, "--strict"), "--strict", "target-only: not trained")


def test_evaluate_after_a_killed_training_says_how_to_resume(copy: Workspace) -> None:
    (copy.run_dir("target-only") / "train_state").mkdir(parents=True)  # what a killed pretrain leaves
    absent = absent_of(copy)
    assert "interrupted" in absent["target-only"]["reason"] and absent["target-only"]["fix"].endswith(
        "--resume"
    )


def test_evaluate_after_a_new_prepare_and_a_retrain_names_stale_models(copy: Workspace) -> None:
    # fusion is compared with target-only after training: it needs one
    assert invoke(copy, "pretrain", "--domain", TARGET, *TRAIN, "-q").exit_code == 0
    assert invoke(copy, "transfer", "--strategy", "fusion", *TRAIN, "-q").exit_code == 0
    assert "fusion" not in absent_of(copy)
    assert invoke(copy, "pretrain", *TRAIN, "--lr", "0.01", "-q").exit_code == 0
    assert invoke(copy, "embed", "--device", "cpu").exit_code == 0  # the vectors fusion reads changed
    assert absent_of(copy)["fusion"]["reason"].startswith("stale: ")
    # explicitly asked for, the stale model is an error that names the right command
    one_error_line(invoke(copy, *EVAL, "--model", "fusion"), "xdrec transfer --strategy fusion")
    assert invoke(copy, "prepare", SOURCE, TARGET, "--min-item", "3", "-q").exit_code == 0
    absent = absent_of(copy)
    assert "another prepared dataset" in absent["fusion"]["reason"]
    line = one_error_line(invoke(copy, *EVAL, "--model", "fusion"), "xdrec transfer --strategy fusion")
    assert "xdrec pretrain" not in line


def test_recommend_names_the_models_it_could_not_use(copy: Workspace) -> None:
    import polars as pl

    # A cold user to recommend for: source history and no target interaction at all (recommend reads the
    # whole history, so a cold-start hold-out user, whose target items are in test, is warm there).
    dataset = copy.dataset_dir(f"{SOURCE}+{TARGET}")
    events = pl.read_parquet(dataset / "interactions.parquet")
    in_target = events.filter(pl.col("domain") == TARGET)["user_id"].unique().implode()
    cold_ids = events.filter(pl.col("domain") == SOURCE, ~pl.col("user_id").is_in(in_target))["user_id"]
    users = pl.read_parquet(dataset / "users.parquet")
    cold_user = users.filter(pl.col("user_id").is_in(cold_ids.unique().implode()))["user"].sort()[0]
    result = invoke(copy, "recommend", cold_user, "--json")
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["model"] == "popularity" and rec["segment"] == "cold"
    assert {a["model"] for a in rec["absent"]} == {"mapping", "bag"}  # the default ones serving cold users
    table = invoke(copy, "recommend", cold_user)
    assert "not available: bag, not trained" in table.stdout
    one_error_line(invoke(copy, "recommend", cold_user, "--strict"), "bag: not trained")


def test_transfer_without_shared_users_refuses_mapping_instead_of_a_nan(tmp_path: Path) -> None:
    from tests.conftest import random_raw

    ws = Workspace(tmp_path / "ws")
    ws.raw_dir.mkdir(parents=True)
    random_raw("Src", 200, 60, 4000, seed=1, user_prefix="A").write_parquet(ws.raw("Src"))
    random_raw("Tgt", 200, 60, 4000, seed=2, user_prefix="B").write_parquet(ws.raw("Tgt"))
    for args in (("prepare", "Src", "Tgt", "--min-item", "2", "-q"), ("pretrain", *TRAIN, "-q"), ("embed",)):
        assert invoke(ws, *args).exit_code == 0
    result = invoke(ws, "transfer", "--strategy", "mapping", *TRAIN, "-q")
    one_error_line(result, "no", "mapping learns from users active in both domains")
    assert "nan" not in result.output


def test_transfer_resumes_an_interrupted_strategy(copy: Workspace, monkeypatch) -> None:
    import xdrec.fit

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    # fusion is compared with target-only after training: it needs one
    assert invoke(copy, "pretrain", "--domain", TARGET, *TRAIN, "-q").exit_code == 0
    monkeypatch.setattr(xdrec.fit, "save_checkpoint", killed)
    args = ("transfer", "--strategy", "fusion", "--device", "cpu", "--epochs", "1", "-q")
    assert invoke(copy, *args).exit_code == 130
    assert absent_of(copy)["fusion"]["fix"] == "xdrec transfer --strategy fusion --resume"
    monkeypatch.undo()
    result = invoke(copy, *args[:-3], "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed after epoch 1" in result.stderr and "after 2 epochs" in result.stdout
    metrics = (copy.model_dir("fusion") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]


def test_demo_says_where_the_plot_is_and_quotes_the_workspace(
    trained: Workspace, tmp_path: Path, monkeypatch
) -> None:
    from xdrec.evaluation import EvaluateConfig
    from xdrec.pipeline import evaluate

    ws = Workspace(tmp_path / "my ws")
    shutil.copytree(trained.root, ws.root)

    def fake_demo(workspace: Workspace, **_kwargs):
        return workspace, [evaluate(workspace, EvaluateConfig(bootstrap=0, device="cpu"))]

    monkeypatch.setattr(xdrec.pipeline, "demo", fake_demo)
    result = invoke(ws, "demo")
    assert result.exit_code == 0, result.output
    plot = ws.reports_dir / f"{SOURCE}+{TARGET}" / TARGET / "report.png"
    assert f"plot: {plot}" in result.stdout and plot.exists()
    assert f"--workspace '{ws.root}' overlap" in result.stdout  # pastes into a shell as it is


def test_run_resumes_a_killed_training_only_when_started_the_same_way(copy: Workspace, monkeypatch) -> None:
    """`run` passes resume=None: continue an interrupted training of the same record and options."""
    import xdrec.fit
    from xdrec.pretraining import pretrain
    from xdrec.training import TrainConfig

    train = TrainConfig(epochs=2, device="cpu", lr=0.004)
    real_save = xdrec.fit.save_checkpoint

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xdrec.fit, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain(copy, train_config=train, resume=None, progress=False)
    monkeypatch.setattr(xdrec.fit, "save_checkpoint", real_save)
    other = pretrain(
        copy, train_config=TrainConfig(epochs=2, device="cpu", lr=0.002), resume=None, progress=False
    )
    assert other.training.resumed_from_epoch == 0  # other options: started over
    monkeypatch.setattr(xdrec.fit, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain(copy, train_config=train, resume=None, progress=False)
    monkeypatch.setattr(xdrec.fit, "save_checkpoint", real_save)
    same = pretrain(copy, train_config=train, resume=None, progress=False)
    assert same.training.resumed_from_epoch == 2 and same.training.epochs_run == 2
