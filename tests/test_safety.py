"""Safe with a user's files, and never a silently wrong result.

Each test here is one class of fault: xdrec touching what it did not write, a wrong number with exit 0,
or a traceback where one line belongs. Each failed on the code before the fix it guards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from xdrec.cli import app
from xdrec.data.synthetic import SyntheticConfig, write_raw
from xdrec.errors import XdrecError
from xdrec.workspace import Workspace, sweep

runner = CliRunner()
SYNTHETIC = SyntheticConfig(n_users=300)
SOURCE, TARGET = SYNTHETIC.source_domain, SYNTHETIC.target_domain
TRAIN = ("--device", "cpu", "--epochs", "1")


def invoke(root: Path, *args: str) -> Result:
    return runner.invoke(app, ["--workspace", str(root), *args])


def one_error_line(result: Result, *fragments: str, code: int = 1) -> str:
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared") / "ws"
    write_raw(Workspace(root).raw_dir, SYNTHETIC)
    assert invoke(root, "prepare", SOURCE, TARGET, "-q").exit_code == 0
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, prepared: Path) -> Path:
    root = tmp_path_factory.mktemp("trained") / "ws"
    shutil.copytree(prepared, root)
    for args in (("pretrain", *TRAIN, "-q"), ("pretrain", *TRAIN, "-q", "--domain", TARGET)):
        result = invoke(root, *args)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "ws", symlinks=True)
    return tmp_path / "ws"


# --- never touch what xdrec did not write ------------------------------------------------------


def test_the_sweep_removes_only_its_own_temp_names(tmp_path: Path) -> None:
    area = tmp_path / "reports"
    (area / ".git").mkdir(parents=True)
    (area / ".git" / "HEAD").write_text("ref")
    (area / ".gitkeep").write_text("")
    (area / "mine" / ".hidden").mkdir(parents=True)
    ours = [area / ".xdrec-tmp-report.json.abc.tmp", area / "mine" / ".xdrec-tmp-x.y"]
    ours[0].write_text("x")
    ours[1].mkdir()
    sweep(area)
    assert not any(p.exists() for p in ours)
    assert (area / ".git" / "HEAD").exists() and (area / ".gitkeep").exists()
    assert (area / "mine" / ".hidden").is_dir()


def test_the_sweep_never_follows_a_link(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".xdrec-tmp-not-yours").write_text("keep")  # even our prefix, behind a link, is not ours
    area = tmp_path / "ws" / "models"
    area.mkdir(parents=True)
    (area / "linked").symlink_to(home)
    (area / ".xdrec-tmp-link").symlink_to(home)  # a link with our name: unlinked, never descended into
    sweep(area)
    assert (home / ".ssh").is_dir() and (home / ".xdrec-tmp-not-yours").exists()
    assert not (area / ".xdrec-tmp-link").is_symlink()


def test_an_area_linked_out_of_the_workspace_is_refused(prepared: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".bashrc").write_text("keep")
    (root / "reports").symlink_to(home)
    one_error_line(invoke(root, "evaluate", "--device", "cpu"), "symbolic link", "outside the workspace")
    assert (home / ".ssh").is_dir() and (home / ".bashrc").read_text() == "keep"


def test_a_lock_file_that_is_a_link_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    locks = tmp_path / "ws" / ".locks"
    locks.mkdir(parents=True)
    (locks / "models.lock").symlink_to(victim)
    with (
        pytest.raises(XdrecError, match="symbolic link"),
        Workspace(tmp_path / "ws").writing(["models"], "x"),
    ):
        pass
    assert victim.read_text() == "precious"


def test_demo_refuses_a_temp_folder_it_did_not_make(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = Workspace.demo().root  # made by us: fine, mode 0700
    assert oct(planted.stat().st_mode & 0o777) == "0o700"
    planted.rmdir()
    planted.symlink_to(elsewhere)  # someone made it first, as a link
    with pytest.raises(XdrecError, match="not made by you"):
        Workspace.demo()
    planted.unlink()
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)  # or as a folder anyone can write in
    with pytest.raises(XdrecError, match="not made by you"):
        Workspace.demo()


@pytest.mark.parametrize(
    "args",
    [
        ("prepare", "../../evil", TARGET),
        ("prepare", SOURCE, "a/b"),
        ("fetch", "..", "--source", "x.csv"),
        ("pretrain", "--dataset", "../x+y"),
        ("evaluate", "--model", "../../m", "--device", "cpu"),
    ],
)
def test_every_command_checks_names_the_same_way(
    prepared: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    shutil.copytree(prepared, tmp_path / "ws")
    one_error_line(invoke(tmp_path / "ws", *args), "cannot be a")
    assert not (tmp_path / "evil").exists()


def test_paths_are_never_glob_patterns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "D1.csv").write_text("user_id,parent_asin,rating,timestamp\nu,i,5,1\n")
    (data / "D[1].csv").write_text("user_id,parent_asin,rating,timestamp\nu,i,5,1\nv,j,4,2\n")
    result = invoke(tmp_path / "ws", "fetch", "D1", "--source", str(data / "D[1].csv"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["rows"] == 2  # the file named, not D1.csv


def test_a_workspace_with_glob_characters_reads_its_own_data(prepared: Path, tmp_path: Path) -> None:
    other = tmp_path / "ws1"  # what `ws[1]` would match as a pattern
    shutil.copytree(prepared, other)
    root = tmp_path / "ws[1]"
    shutil.copytree(prepared, root)
    shutil.rmtree(other / "raw")
    SyntheticConfig(n_users=150)
    write_raw(Workspace(other).raw_dir, SyntheticConfig(n_users=150))
    mine = invoke(root, "prepare", SOURCE, TARGET, "--json")
    assert mine.exit_code == 0, mine.output
    theirs = invoke(other, "prepare", SOURCE, TARGET, "--json")
    assert json.loads(mine.stdout)["users"] != json.loads(theirs.stdout)["users"]
    overlap = invoke(root, "overlap", "--json")
    assert overlap.exit_code == 0, overlap.output


def test_an_empty_workspace_is_refused(tmp_path: Path) -> None:
    for args in (["--workspace", "", "overlap"], ["overlap", "--workspace="]):
        one_error_line(runner.invoke(app, args), "--workspace", code=2)


# --- never a wrong number with exit 0 -----------------------------------------------------------


def test_a_reader_sees_one_version_while_prepare_replaces_it(prepared: Path, tmp_path: Path) -> None:
    from xdrec.data.dataset import Dataset
    from xdrec.data.prepare import PrepareConfig, prepare

    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    ws = Workspace(root)
    data = Dataset.from_workspace(ws)
    before = data.manifest  # the reader has started
    prepare(ws, SOURCE, TARGET, PrepareConfig(min_user=8, min_item=8))  # a writer swaps a new dataset in
    after = Dataset.from_workspace(ws).manifest
    assert after["users"] != before["users"]
    assert data.users.height == before["users"]  # the reader still reads the version it started with
    rows = sum(d["interactions"] for d in before["domains"].values())
    assert data.interactions().collect().height == rows


def test_diverged_training_stops_and_keeps_the_previous_model(copy: Path) -> None:
    weights = copy / "models" / "source-only" / "model.safetensors"
    old = weights.read_bytes()
    line = one_error_line(invoke(copy, "pretrain", *TRAIN, "--lr", "1e12", "-q"), "diverged")
    assert "previous model is kept" in line
    assert weights.read_bytes() == old


def test_ids_are_printed_as_text_never_markup() -> None:
    from types import SimpleNamespace

    from xdrec.cli import console
    from xdrec.views import recommend_table

    items = [{"rank": 1, "item": "[/]", "score": 1.0}, {"rank": 2, "item": "a[red]b", "score": 0.5}]
    rec = SimpleNamespace(
        user="u[bold]1", segment="warm", model="bag", items=items, score="score", held_out=False
    )
    with console.capture() as captured:
        console.print(recommend_table(rec))
    text = captured.get()
    assert "[/]" in text and "a[red]b" in text and "u[bold]1" in text


def test_report_json_and_plot_are_one_unit(copy: Path, monkeypatch) -> None:
    import errno

    import xdrec.report

    assert invoke(copy, "evaluate", "--device", "cpu", "--bootstrap", "20").exit_code == 0
    folder = next((copy / "reports").glob("*/*"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "report.png"))

    monkeypatch.setattr(xdrec.report, "plot_figure", full_disk)
    evaluated = invoke(copy, "evaluate", "--device", "cpu", "--bootstrap", "20", "--k", "5", "-q")  # no bars
    one_error_line(evaluated, "no space")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old pair, whole


def test_a_quick_evaluate_does_not_replace_a_report_with_intervals(copy: Path) -> None:
    assert invoke(copy, "evaluate", "--device", "cpu", "--bootstrap", "20").exit_code == 0
    report = next((copy / "reports").glob("*/*/report.json"))
    before = report.read_bytes()
    quick = invoke(copy, "evaluate", "--device", "cpu", "--bootstrap", "0")
    assert quick.exit_code == 0 and "not saved" in quick.stdout
    assert report.read_bytes() == before
    again = invoke(copy, "evaluate", "--device", "cpu", "--bootstrap", "30")
    assert again.exit_code == 0 and json.loads(report.read_text())["bootstrap"] == 30


def test_run_reuses_the_prepared_options_unless_given(prepared: Path, tmp_path: Path) -> None:
    from xdrec.data.prepare import PrepareConfig, prepare
    from xdrec.pipeline import RunConfig, _prepare_options

    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    ws = Workspace(root)
    prepare(ws, SOURCE, TARGET, PrepareConfig(min_user=3, min_item=3))
    name = f"{SOURCE}+{TARGET}"
    options, changed = _prepare_options(ws, name, RunConfig())  # a plain `run`: nothing given
    assert (options.min_user, options.min_item, changed) == (3, 3, "")
    given = RunConfig(prepare=PrepareConfig(min_user=5, min_item=3), keep=frozenset({"min_user", "min_item"}))
    options, changed = _prepare_options(ws, name, given)
    assert (options.min_user, options.min_item) == (5, 3)
    assert changed == "--min-user 5 (was 3)"


# --- one line, not a traceback ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("pretrain", "--lr", "nan"),
        ("pretrain", "--weight-decay", "-5"),
        ("pretrain", "--dropout", "1.5"),
        ("transfer", "--bag-weight-decay", "-1"),
        ("prepare", SOURCE, TARGET, "--cold-start", "1.5"),
        ("evaluate", "--bootstrap", "-1"),
    ],
)
def test_value_range_errors_are_usage_errors(prepared: Path, args: tuple[str, ...]) -> None:
    one_error_line(invoke(prepared, *args), code=2)


def test_a_missing_gpu_is_said_before_any_work(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for args in (("run", SOURCE, TARGET, "--device", "cuda"), ("evaluate", "--device", "cuda")):
        one_error_line(invoke(tmp_path / "ws", *args), "--device cuda")
        assert not (tmp_path / "ws" / "raw").exists()


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["model"].update(heads=3),  # heads that do not divide hidden
        lambda c: c["model"].update(hidden="64"),  # a string for a number
        lambda c: c.pop("model"),  # a missing key
        lambda c: c.update(model=[1, 2]),  # a list for an object
    ],
)
def test_a_hand_edited_model_config_is_one_line(copy: Path, edit) -> None:
    path = copy / "models" / "target-only" / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    one_error_line(invoke(copy, "evaluate", "--device", "cpu", "--model", "target-only"), "config.json")


def test_a_config_that_is_a_list_is_one_line(copy: Path) -> None:
    (copy / "models" / "target-only" / "config.json").write_text("[1, 2]")
    one_error_line(invoke(copy, "evaluate", "--device", "cpu", "--model", "target-only"), "config.json")


def test_a_full_disk_in_a_data_library_says_so(copy: Path, monkeypatch) -> None:
    import polars as pl

    def full(*_args, **_kwargs):
        raise pl.exceptions.ComputeError("failed to write: No space left on device (os error 28)")

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", full)
    one_error_line(invoke(copy, "prepare", SOURCE, TARGET, "--min-item", "3"), "no space left")


@pytest.fixture(scope="module")
def elsewhere(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another workspace with the same raw data prepared with another seed: the same item vocabulary (a
    model trained there loads here and scores), other cold-start users (its numbers here would be wrong)."""
    root = tmp_path_factory.mktemp("elsewhere") / "ws"
    shutil.copytree(prepared / "raw", root / "raw")
    for args in (
        ("prepare", SOURCE, TARGET, "-q", "--seed", "7"),
        ("pretrain", *TRAIN, "-q", "--domain", TARGET),
    ):
        assert invoke(root, *args).exit_code == 0
    return root


def test_a_model_copied_with_a_forged_hash_is_refused(copy: Path, elsewhere: Path) -> None:
    mine = copy / "models" / "target-only"
    config = json.loads((mine / "config.json").read_text())
    shutil.rmtree(mine)
    shutil.copytree(elsewhere / "models" / "target-only", mine)
    forged = json.loads((mine / "config.json").read_text())
    assert forged["model"]["n_items"] == config["model"]["n_items"]  # it would score this dataset's items
    forged["dataset"] = config["dataset"]  # this workspace's dataset and manifest hash
    (mine / "config.json").write_text(json.dumps(forged))
    for args in (
        ("evaluate", "--device", "cpu", "--model", "target-only"),
        ("embed", "--model", "target-only"),
    ):
        one_error_line(invoke(copy, *args), "target-only", "another dataset")


def test_a_model_with_another_vocabulary_is_refused(copy: Path) -> None:
    """A model saved before weights recorded their dataset: its vocabulary size still tells."""
    from safetensors.torch import load_file, save_file

    mine = copy / "models" / "target-only"
    config = json.loads((mine / "config.json").read_text())
    weights = load_file(str(mine / "model.safetensors"))
    weights["item_emb.weight"] = weights["item_emb.weight"][:-5]
    save_file(weights, str(mine / "model.safetensors"))  # no header: as an older xdrec wrote it
    config["model"]["n_items"] -= 5
    (mine / "config.json").write_text(json.dumps(config))
    one_error_line(invoke(copy, "evaluate", "--device", "cpu", "--model", "target-only"), "another dataset")


@pytest.mark.parametrize(
    ("file", "column", "value", "says"),
    [
        ("interactions", "item_id", 10_000, "item id 10000"),
        ("interactions", "item_id", 0, "item id 0"),
        ("interactions", "user_id", 10_000, "user id 10000"),
        ("interactions", "user_id", None, "without a user or item id"),
        ("interactions", "domain", "Other", "domain 'Other'"),
        ("items", "item_id", 10_000, "items 1.."),
        ("users", "user_id", 10_000, "users 0.."),
    ],
)
def test_an_id_out_of_range_in_a_dataset_file_is_one_line(
    copy: Path, file: str, column: str, value: object, says: str
) -> None:
    import polars as pl

    path = next((copy / "datasets").glob(f"*/{file}.parquet"))
    frame = pl.read_parquet(path)
    first = pl.int_range(pl.len()) == 0
    changed = pl.when(first).then(pl.lit(value)).otherwise(pl.col(column)).cast(frame.schema[column])
    frame.with_columns(changed.alias(column)).write_parquet(path)
    for args in (("pretrain", *TRAIN, "-q"), ("evaluate", "--device", "cpu", "--bootstrap", "0")):
        one_error_line(invoke(copy, *args), f"{file}.parquet", says, "xdrec prepare")


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t["params"].update(hidden="abc"),  # a string for a number
        lambda t: t["params"].update(dropout=7),  # outside its range
        lambda t: t["params"].update(lr=-1.0),  # one the option check would blame on --lr
        lambda t: t["params"].update(hidden=64.0),  # a float for an int
        lambda t: t["params"].update(colour="red"),  # not a setting
        lambda t: t.update(params=[1]),  # not an object
        lambda t: t.pop("metric"),  # a missing key
    ],
)
def test_a_tuning_file_with_a_wrong_value_is_one_line(prepared: Path, tmp_path: Path, edit) -> None:
    from dataclasses import asdict

    from xdrec.data.dataset import Dataset
    from xdrec.tuned_settings import Tuned, settings_path
    from xdrec.tuning import defaults

    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    data = Dataset.from_workspace(Workspace(root))
    path = settings_path(Workspace(root), data.name, "target-only")
    path.parent.mkdir(parents=True)
    tuned = Tuned("target-only", data.name, data.manifest_hash, "NDCG@10", 0.1, 0, 1, defaults("target-only"))
    stored = asdict(tuned)
    edit(stored)
    path.write_text(json.dumps(stored))
    one_error_line(invoke(root, "pretrain", *TRAIN, "-q", "--domain", TARGET), str(path), "xdrec tune")


# --- Ctrl-C: a message, exit 130, the old result intact ---------------------------------------


def interrupted(result: Result) -> None:
    assert result.exit_code == 130, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), result.stderr


def test_ctrl_c_in_prepare_keeps_the_old_dataset(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    import polars as pl
    from typer.core import TyperGroup

    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    folder = next((root / "datasets").iterdir())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def ctrl_c(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", ctrl_c)  # while it writes the new dataset
    interrupted(invoke(root, "prepare", SOURCE, TARGET, "--min-item", "3"))
    monkeypatch.undo()
    monkeypatch.setattr(TyperGroup, "parse_args", ctrl_c)  # while the command line is read
    interrupted(invoke(root, "prepare", SOURCE, TARGET, "--min-item", "3"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_ctrl_c_while_the_commands_are_built_is_one_line(monkeypatch, capsys) -> None:
    import sys

    import typer.main

    from xdrec.cli import main

    def ctrl_c(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.main, "get_group", ctrl_c)
    monkeypatch.setattr(sys, "argv", ["xdrec", "overlap"])
    with pytest.raises((SystemExit, KeyboardInterrupt)) as exited:  # the latter: a traceback
        main()
    assert isinstance(exited.value, SystemExit) and exited.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: interrupted")


def test_ctrl_c_in_tune_is_one_line_without_optunas_traceback(prepared: Path, tmp_path: Path) -> None:
    """A real SIGINT in a real process: Optuna logs to the stderr it saw at import, not CliRunner's."""
    import subprocess
    import sys

    root = tmp_path / "ws"
    shutil.copytree(prepared, root)
    code = (
        "import os, signal, sys, xdrec.fit, xdrec.tuning\n"
        "xdrec.fit.train = lambda *a, **k: os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C mid-trial\n"
        "sys.argv = ['xdrec', *sys.argv[1:]]\n"
        "from xdrec.cli import main\n"
        "main()\n"
    )
    args = ["--workspace", str(root), "tune", "--trials", "2", "--epochs", "1", "--device", "cpu", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, check=False
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 130, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), done.stderr


# --- an offline fetch -----------------------------------------------------------------------------


def test_an_offline_fetch_is_one_line_at_once(tmp_path: Path, monkeypatch, caplog) -> None:
    """The hub at an address nothing listens on (no network used): one line, not the client's retries."""
    import logging
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as s:  # a port that refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", hub)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub + "/{repo_id}/resolve/{revision}/{filename}"
    )
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    one_error_line(invoke(tmp_path / "ws", "fetch", "Gift_Cards", "-q"), "cannot reach the Hugging Face hub")
    assert time.perf_counter() - started < 10
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


# --- transfer --resume after a kill -----------------------------------------------------------


def test_transfer_resume_continues_the_killed_strategy_only(copy: Path, monkeypatch) -> None:
    import xdrec.fit

    def killed(*_args, **_kwargs):  # after the last epoch, before the model is saved
        raise KeyboardInterrupt

    assert invoke(copy, "embed", "--device", "cpu").exit_code == 0
    both = ("transfer", "--strategy", "finetune", "--strategy", "bag", "--device", "cpu")
    assert invoke(copy, *both, "--epochs", "1", "--lr", "0.002", "-q").exit_code == 0  # an earlier transfer
    monkeypatch.setattr(xdrec.fit, "save_checkpoint", killed)
    assert invoke(copy, *both, "--epochs", "1", "-q").exit_code == 130  # killed in finetune, bag not begun
    monkeypatch.undo()
    result = invoke(copy, *both, "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("resumed after epoch 1") == 1  # finetune's; bag's finished run is another's
    bag = json.loads((copy / "models" / "bag" / "config.json").read_text())
    assert bag["train"]["lr"] == 0.001 and bag["epochs_run"] == 2

    # Interrupted again, then its source model retrained: continuing it would train on what is gone.
    monkeypatch.setattr(xdrec.fit, "save_checkpoint", killed)
    one = ("transfer", "--strategy", "finetune", "--device", "cpu", "--epochs", "1")
    assert invoke(copy, *one, "-q").exit_code == 130
    monkeypatch.undo()
    for args in (("pretrain", *TRAIN, "-q", "--seed", "3"), ("embed", "--device", "cpu")):
        assert invoke(copy, *args).exit_code == 0
    one_error_line(invoke(copy, *one, "--resume"), "cannot resume finetune", "built_from")
