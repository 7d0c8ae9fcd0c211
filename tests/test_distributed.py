"""Data-parallel training under torchrun (gloo on CPU): 2 processes == 1 process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal
from safetensors.torch import load_file

from xdrec.distributed import launched
from xdrec.errors import XdrecError
from xdrec.evaluation import KEY_COLUMNS

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker

SRC = Path(__file__).resolve().parents[1] / "src"


def torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
        # gloo can abort a process in its own thread teardown (SIGABRT, "terminate called without an
        # active exception"; see xdrec.distributed.exit_process), rarely, on a loaded machine. That is
        # torch's, not a wrong result: run once more. Any other failure, or a second abort, fails the test.
        if done.returncode == 0 or "terminate called without an active exception" not in done.stderr:
            return done
    return done


def test_two_gloo_processes_train_what_one_process_trains(tmp_path: Path) -> None:
    done = torchrun(str(Path(ddp_worker.__file__)), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranked = json.loads((tmp_path / "results.json").read_text())
    for loss in ("ce", "sampled"):
        # One process, batch 2 x 8: the same global batches, the same shared negatives.
        single, expected = ddp_worker.run(loss, 2 * ddp_worker.BATCH, tmp_path / f"single-{loss}")
        got = ranked[loss]
        assert got["world_size"] == 2 and expected["world_size"] == 1
        assert got["steps"] == expected["steps"] == 3 * 4  # ceil(49 / 16) global batches per epoch
        weights = load_file(str(tmp_path / f"{loss}.safetensors"))
        for name, value in single.state_dict().items():
            torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=f"{loss} {name}")
        # The sharded validation metric reduces to the whole one; the losses are the global batches'.
        assert got["best_metric"] == pytest.approx(expected["best_metric"], abs=1e-6)
        for a, b in zip(got["history"], expected["history"], strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["NDCG@10"] == pytest.approx(b["NDCG@10"], abs=1e-6)
        # Rank 0 alone wrote the state: three epochs of metrics, one state directory.
        lines = (tmp_path / f"run-{loss}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # Evaluation sharded by users (full and sampled: the same negatives) == one process, rows in order.
    for negatives in (None, 6):
        expected = ddp_worker.ranked(negatives)
        got = pl.DataFrame(ranked["ranked"][str(negatives)], schema=expected.schema)
        assert got.select(KEY_COLUMNS).equals(expected.select(KEY_COLUMNS))
        assert_frame_equal(got, expected, check_exact=False, abs_tol=1e-9)
    # Interrupted after 2 epochs and resumed by both ranks == 3 epochs in one go (every rank's RNG saved).
    whole, resumed = (load_file(str(tmp_path / f"{name}.safetensors")) for name in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(XdrecError, match="world_size was 2"):  # one process cannot continue a 2-rank run
        ddp_worker.interrupted(tmp_path / "split", 4, resume=True)


def test_ranks_come_from_the_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not launched().distributed  # a plain process is rank 0 of 1
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = launched()
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.main) == (1, 2, 1, False)


def test_torchrun_pretrain_prints_one_result_and_writes_one_checkpoint(small_workspace) -> None:
    from typer.testing import CliRunner

    from xdrec.cli import app

    ws = str(small_workspace.root)
    prepared = CliRunner().invoke(app, ["--workspace", ws, "prepare", "Src", "Tgt", "--min-item", "3"])
    assert prepared.exit_code == 0, prepared.output
    args = ("--epochs", "2", "--batch-size", "16", "--device", "cpu", "--json")
    done = torchrun("-m", "xdrec", "--workspace", ws, "pretrain", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one JSON document: rank 1 printed nothing
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    model_dir = small_workspace.model_dir("source-only")
    config = json.loads((model_dir / "config.json").read_text())
    assert config["world_size"] == 2 and (model_dir / "model.safetensors").exists()
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one writer


def test_torchrun_run_trains_every_stage_once_and_prints_one_report(tmp_path: Path) -> None:
    from conftest import random_raw

    ws = tmp_path / "ws"
    (ws / "raw").mkdir(parents=True)
    random_raw("Src", 200, 80, 3000, seed=1).write_parquet(ws / "raw" / "Src.parquet")
    random_raw("Tgt", 200, 90, 2500, seed=2).write_parquet(ws / "raw" / "Tgt.parquet")
    args = ("run", "Src", "Tgt", "--min-item", "3", "--epochs", "1", "--bootstrap", "20", "--device", "cpu")
    done = torchrun("-m", "xdrec", "--workspace", str(ws), *args, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)  # one JSON document: rank 1 printed nothing
    assert doc["world_size"] == 2 and doc["reports"][0]["results"]
    for model in ("source-only", "target-only", "mapping", "finetune", "bag"):
        config = json.loads((ws / "models" / model / "config.json").read_text())
        assert config["world_size"] == 2, model


def xdrec(ws: Path, *args: str) -> str:
    """One xdrec command in this process (one rank); its stdout."""
    from typer.testing import CliRunner

    from xdrec.cli import app

    done = CliRunner().invoke(app, ["--workspace", str(ws), *args])
    assert done.exit_code == 0, done.output
    return done.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared workspace with source-only, target-only and the source user vectors (one process)."""
    from conftest import random_raw

    ws = tmp_path_factory.mktemp("trained") / "ws"
    (ws / "raw").mkdir(parents=True)
    random_raw("Src", 300, 120, 6000, seed=1).write_parquet(ws / "raw" / "Src.parquet")
    random_raw("Tgt", 300, 150, 5000, seed=2).write_parquet(ws / "raw" / "Tgt.parquet")
    xdrec(ws, "prepare", "Src", "Tgt", "--min-item", "3", "--quiet")
    for domain in ("Src", "Tgt"):
        xdrec(ws, "pretrain", "--domain", domain, "--epochs", "1", "--device", "cpu", "--quiet")
    xdrec(ws, "embed", "--device", "cpu")
    return ws


def test_torchrun_evaluate_shards_users_and_reports_what_one_process_reports(trained: Path) -> None:
    args = ("evaluate", "--both-domains", "--bootstrap", "50", "--device", "cpu", "--json")
    single = json.loads(xdrec(trained, *args))
    done = torchrun("-m", "xdrec", "--workspace", str(trained), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)  # one JSON document: rank 1 printed nothing
    assert got.pop("world_size") == 2 and "world_size" not in single
    assert len(got["reports"]) == 2 and got["reports"][0]["results"]
    assert_close(got, single)
    for report in got["reports"]:  # rank 0 wrote the report it printed
        saved = trained / "reports" / "Src+Tgt" / report["domain"] / "report.json"
        assert json.loads(saved.read_text()) == report


def assert_close(got: object, expected: object) -> None:
    """Equal JSON, floats to 1e-9 (the ranks score differently composed batches)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            assert_close(got[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert_close(a, b)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-9)
    else:
        assert got == expected


def test_torchrun_transfer_trains_what_one_process_trains(trained: Path, tmp_path: Path) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    args = ("transfer", "--strategy", "mapping", "--epochs", "2", "--device", "cpu", "--json")
    done = torchrun("-m", "xdrec", "--workspace", str(ws), *args, "--batch-size", "16")
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(done.stdout)  # one result, from rank 0
    assert row["strategy"] == "mapping" and row["world_size"] == 2 and row["epochs_run"] == 2
    model_dir = ws / "models" / "mapping"
    assert json.loads((model_dir / "config.json").read_text())["world_size"] == 2
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one writer
    ranked = load_file(str(model_dir / "model.safetensors"))
    # One process at the same global batch (2 x 16) trains the same weights.
    (single,) = json.loads(xdrec(ws, *args, "--batch-size", "32"))
    assert single["world_size"] == 1 and single["valid"] == pytest.approx(row["valid"], abs=1e-6)
    for name, value in load_file(str(model_dir / "model.safetensors")).items():
        torch.testing.assert_close(ranked[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_torchrun_tune_is_refused_in_one_line(trained: Path) -> None:
    done = torchrun("-m", "xdrec", "--workspace", str(trained), "tune", "--trials", "1", "--device", "cpu")
    assert done.returncode == 1
    assert done.stderr.count("error: ") == 1 and "error: tune runs in one process" in done.stderr
    assert not (trained / "tuning").exists() or not any((trained / "tuning").rglob("*.journal"))
