"""The model-side commands through the CLI, chained as a user runs them: pretrain, embed, transfer, evaluate,
recommend, run, demo (and fetch / the workspace option they all start from).

One module-scoped workspace is built command by command (`chain`), so each stage's test checks what that
command printed and wrote; tests that would change it work on a copy. Everything is tiny synthetic data,
1 epoch, `--device cpu`: the file runs in well under a minute on one core.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import torch
from click.testing import Result
from rich.console import Console
from safetensors import safe_open
from typer.testing import CliRunner

import xdrec.cli as cli
import xdrec.data.amazon as amazon
from xdrec.cli import app
from xdrec.data.dataset import Dataset
from xdrec.data.synthetic import SyntheticConfig, write_raw
from xdrec.evaluation import HISTORY_SEGMENTS
from xdrec.workspace import Workspace

runner = CliRunner()

SYNTHETIC = SyntheticConfig(n_users=600)
SOURCE, TARGET = SYNTHETIC.source_domain, SYNTHETIC.target_domain
DATASET = f"{SOURCE}+{TARGET}"
TRAIN = ("--device", "cpu", "--epochs", "1")  # what every training command gets here
STRATEGIES = ["mapping", "finetune", "fusion", "joint", "bag"]  # `transfer --strategy all`, in its order
DEFAULT = ["mapping", "finetune", "bag"]  # what `run` (and `demo`) train on a loo dataset
METRICS_AT_10 = {"HR@10", "NDCG@10", "MRR", "Recall@10"}
CUDA = torch.cuda.is_available()


def invoke(ws: Workspace | Path, *args: str, **kwargs) -> Result:
    root = ws.root if isinstance(ws, Workspace) else ws
    return runner.invoke(app, ["--workspace", str(root), *args], **kwargs)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def one_error_line(result: Result, *fragments: str, code: int = 1) -> str:
    """A user error: exit 1 (a usage error: 2), one `error: ...` line on stderr naming `fragments`,
    nothing on stdout."""
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), f"escaped as a traceback: {result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def flat(text: str) -> str:
    """Terminal output without whitespace: rich wraps long paths and titles at the console width."""
    return "".join(text.split())


def model_files(ws: Workspace, name: str) -> bool:
    return all((ws.model_dir(name) / f).is_file() for f in ("model.safetensors", "config.json"))


# --------------------------------------------------------------------------------------- the chain


@dataclass
class Chain:
    ws: Workspace
    results: dict[str, Result] = field(default_factory=dict)
    models_after: dict[str, list[str]] = field(default_factory=dict)  # models/ listing after each step

    def json(self, step: str):
        return json.loads(self.results[step].stdout)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """raw -> prepare -> pretrain -> pretrain --domain TARGET -> embed -> transfer x2, all through the CLI."""
    ws = Workspace(tmp_path_factory.mktemp("chain") / "ws")
    write_raw(ws.raw_dir, SYNTHETIC)
    done = Chain(ws)
    steps = {
        "prepare": ("prepare", SOURCE, TARGET, "--json"),
        # No --quiet: progress must go to stderr, leaving stdout JSON / one summary line.
        "pretrain": ("pretrain", *TRAIN, "--json"),
        "pretrain-target": ("pretrain", "--domain", TARGET, *TRAIN),
        "embed": ("embed", "--device", "cpu", "--json"),
        "transfer-two": ("transfer", "--strategy", "fusion", "--strategy", "mapping", *TRAIN, "--json"),
        "transfer-all": ("transfer", "--strategy", "all", *TRAIN, "--json"),
    }
    for step, args in steps.items():
        done.results[step] = ok(invoke(ws, *args))
        models = ws.root / "models"
        done.models_after[step] = sorted(p.name for p in models.iterdir()) if models.exists() else []
    return done


@pytest.fixture
def chain_copy(chain: Chain, tmp_path: Path) -> Workspace:
    """A private copy of the trained workspace, for tests that break or overwrite part of it."""
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(chain.ws.root, ws.root)
    return ws


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with a prepared dataset and nothing trained yet."""
    ws = Workspace(tmp_path_factory.mktemp("prepared") / "ws")
    write_raw(ws.raw_dir, SyntheticConfig(n_users=200))
    ok(invoke(ws, "prepare", SOURCE, TARGET))
    return ws


def target_users(ws: Workspace) -> dict[str, tuple[str, set[str]]]:
    """A warm user, a cold-start hold-out user and a user with source history only: raw id -> (the segment
    `recommend` serves them as, raw ids of every target item they have). recommend reads the whole
    history, so the hold-out user (whose target items are all in the test split) is warm there."""
    data = Dataset.from_workspace(ws)
    items = data.items(TARGET).select("item_id", "item")
    events = data.interactions().filter(pl.col("domain") == TARGET).collect().join(items, on="item_id")
    has = events.group_by("user_id").agg(pl.col("item").unique())
    users = data.users.join(has, on="user_id", how="left")
    source_users = data.interactions().filter(pl.col("domain") == SOURCE).select("user_id").unique().collect()
    picked = {}
    for cold in (False, True):
        row = (
            users.filter(pl.col("cold") == cold, pl.col("item").is_not_null())
            .sort("user_id")
            .row(0, named=True)
        )
        picked[row["user"]] = ("warm", set(row["item"]))
    only_source = users.filter(pl.col("item").is_null()).join(source_users, on="user_id").sort("user_id")
    picked[only_source["user"][0]] = ("cold", set())
    return picked


# ----------------------------------------------------------------------------------------- pretrain


def test_pretrain_trains_the_source_by_default_with_json_summary(chain: Chain) -> None:
    summary = chain.json("pretrain")
    assert set(summary) == {
        "model", "domain", "dataset", "path", "loss", "loss_reason", "lr", "epochs_run", "best_epoch",
        "valid_NDCG@10", "seconds", "device", "world_size", "tuned", "refit",
    }  # fmt: skip
    assert summary["model"] == "source-only" and summary["domain"] == SOURCE
    assert summary["refit"]["epochs"] == summary["best_epoch"]  # then trained again on the valid items too
    assert summary["dataset"] == DATASET and summary["device"] == "cpu" and summary["world_size"] == 1
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1
    assert 0.0 <= summary["valid_NDCG@10"] <= 1.0
    assert Path(summary["path"]) == chain.ws.model_dir("source-only")
    assert chain.models_after["pretrain"] == ["source-only"]
    assert model_files(chain.ws, "source-only")
    config = json.loads((chain.ws.model_dir("source-only") / "config.json").read_text())
    assert config["domain"] == SOURCE and config["role"] == "source"
    assert config["dataset"]["manifest_hash"] == Dataset.from_workspace(chain.ws).manifest_hash
    metrics = (chain.ws.model_dir("source-only") / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and json.loads(metrics[0])  # one line per epoch


def test_pretrain_domain_target_trains_the_target_only_baseline(chain: Chain) -> None:
    result = chain.results["pretrain-target"]
    line = flat(result.stdout)
    assert line.startswith("target-only") and TARGET in line
    assert flat(str(chain.ws.model_dir("target-only"))) in line
    assert chain.models_after["pretrain-target"] == ["source-only", "target-only"]
    assert model_files(chain.ws, "target-only")
    config = json.loads((chain.ws.model_dir("target-only") / "config.json").read_text())
    assert config["domain"] == TARGET and config["role"] == "target"


def test_pretrain_before_prepare_says_what_to_run(tmp_path: Path) -> None:
    one_error_line(invoke(tmp_path / "empty", "pretrain", *TRAIN), "xdrec prepare")
    assert not (tmp_path / "empty" / "models").exists()


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
def test_pretrain_on_a_missing_gpu_is_one_line_and_trains_nothing(prepared: Workspace) -> None:
    one_error_line(invoke(prepared, "pretrain", "--device", "cuda", "--epochs", "1"), "--device cuda")
    assert not prepared.model_dir("source-only").exists()


def test_model_options_are_trained_and_recorded(chain_copy: Workspace) -> None:
    shape = ("--hidden", "24", "--blocks", "1", "--heads", "3", "--dropout", "0.1", "--max-len", "12")
    ok(invoke(chain_copy, "pretrain", *shape, "--weight-decay", "0.01", *TRAIN, "--quiet"))
    config = json.loads((chain_copy.model_dir("source-only") / "config.json").read_text())
    assert {k: config["model"][k] for k in ("hidden", "blocks", "heads", "dropout", "max_len")} == {
        "hidden": 24, "blocks": 1, "heads": 3, "dropout": 0.1, "max_len": 12,
    }  # fmt: skip
    assert config["train"]["weight_decay"] == 0.01
    ok(invoke(chain_copy, "embed", "--device", "cpu"))
    # Strategies build on the source model's shape; unset options keep it, set ones override it.
    ok(invoke(chain_copy, "transfer", "--strategy", "fusion", "--dropout", "0.3", *TRAIN, "--quiet"))
    fusion = json.loads((chain_copy.model_dir("fusion") / "config.json").read_text())["model"]
    assert (fusion["hidden"], fusion["blocks"], fusion["dropout"]) == (24, 1, 0.3)
    # finetune copies the source blocks, so it cannot change their shape.
    wrong = invoke(chain_copy, "transfer", "--strategy", "finetune", "--hidden", "48", *TRAIN, "--quiet")
    one_error_line(wrong, "--hidden must stay 24")
    one_error_line(invoke(chain_copy, "pretrain", "--hidden", "25", *TRAIN), "divisible by heads")


def test_large_batch_options_are_trained_and_recorded(chain_copy: Workspace) -> None:
    large = ("--batch-size", "256", "--lr", "0.002", "--lr-scaling", "sqrt")
    result = ok(invoke(chain_copy, "pretrain", *large, "--loss", "sampled", "--in-batch", *TRAIN, "--json"))
    summary = json.loads(result.stdout)
    assert summary["loss"] == "sampled" and summary["lr"] == pytest.approx(0.002 * 2**0.5)  # (256/128)^1/2
    train = json.loads((chain_copy.model_dir("source-only") / "config.json").read_text())["train"]
    assert (train["in_batch"], train["lr_scaling"], train["lr"]) == (True, "sqrt", 0.002)
    ok(invoke(chain_copy, "embed", "--device", "cpu"))
    ok(invoke(chain_copy, "transfer", "--strategy", "finetune", "--lr-scaling", "linear", *TRAIN, "--quiet"))
    train = json.loads((chain_copy.model_dir("finetune") / "config.json").read_text())["train"]
    assert (train["in_batch"], train["lr_scaling"]) == (True, "linear")  # the default: ce ignores it
    wrong = invoke(chain_copy, "transfer", "--lr-scaling", "cubic", *TRAIN)
    assert wrong.exit_code == 2 and "sqrt" in wrong.stderr
    shown = flat(invoke(chain_copy, "run", "--help").stdout)
    assert "--in-batch" in shown and "--lr-scaling" in shown


def test_bag_options_are_trained_and_recorded(chain_copy: Workspace) -> None:
    knobs = ("--bag-dim", "12", "--bag-dropout", "0.1", "--bag-cold-rate", "0.25", "--no-bag-target-input")
    ok(invoke(chain_copy, "transfer", "--strategy", "bag", *knobs, "--bag-members", "2", *TRAIN, "--quiet"))
    config = json.loads((chain_copy.model_dir("bag") / "config.json").read_text())
    assert config["bag"] == {
        "dim": 12, "dropout": 0.1, "cold_rate": 0.25, "target_input": False, "weight_decay": 1.0,
        "members": 2,
    }  # fmt: skip
    assert config["train"]["weight_decay"] == 1.0  # --bag-weight-decay, not --weight-decay
    with safe_open(str(chain_copy.model_dir("bag") / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("table").get_shape()[1] == 2 * 12  # two members of 12 dims
    ok(
        invoke(chain_copy, "evaluate", "--model", "bag", "--device", "cpu", "--bootstrap", "0")
    )  # loads as trained
    bad = invoke(chain_copy, "transfer", "--strategy", "bag", "--bag-dropout", "1", *TRAIN)
    assert bad.exit_code == 2 and "dropout" in bad.stderr  # a value out of range: a usage error


def test_pretrain_unknown_domain_is_one_line(prepared: Workspace) -> None:
    one_error_line(invoke(prepared, "pretrain", "--domain", "Nope", *TRAIN), "'Nope'", SOURCE, TARGET)


@pytest.mark.parametrize("command", ["pretrain", "transfer", "run"])
def test_unknown_loss_is_a_usage_error_naming_the_choices(chain_copy: Workspace, command: str) -> None:
    args = [SOURCE, TARGET] if command == "run" else []
    result = invoke(chain_copy, command, *args, "--loss", "nope", *TRAIN, "--quiet")
    assert result.exit_code == 2 and not isinstance(result.exception, ValueError)
    assert "'nope' is not one of" in result.stderr and "'sampled'" in result.stderr


# -------------------------------------------------------------------------------------------- embed


def test_embed_writes_vectors_and_a_raw_user_index(chain: Chain) -> None:
    result = chain.json("embed")
    vectors, index = (
        chain.ws.embeddings("source-only"),
        chain.ws.root / "embeddings/source-only.users.parquet",
    )
    assert result == {
        "model": "source-only",
        "path": str(vectors),
        "index": str(index),
        "users": result["users"],
        "dim": 64,
    }
    data = Dataset.from_workspace(chain.ws)
    with safe_open(str(vectors), framework="pt") as f:
        assert f.get_tensor("vectors").shape == (result["users"], result["dim"])
        assert f.get_tensor("user_id").shape == (result["users"],)
        assert f.metadata()["manifest_hash"] == data.manifest_hash
        user_ids = f.get_tensor("user_id").tolist()
    users = pl.read_parquet(index)
    assert users.columns == ["user", "user_id", "row"]
    assert users["row"].to_list() == list(range(result["users"]))
    assert users["user_id"].to_list() == user_ids  # row r of `vectors` is that user
    raw = dict(data.users.select("user_id", "user").iter_rows())
    assert all(raw[u] == name for u, name in users.select("user_id", "user").iter_rows())
    quiet = invoke(chain.ws, "embed", "-q")  # scripts pass -q to every stage
    assert quiet.exit_code == 0 and quiet.stdout == "" and vectors.exists()


def test_embed_before_pretrain_says_what_to_run(prepared: Workspace) -> None:
    one_error_line(invoke(prepared, "embed", "--device", "cpu"), "source-only", "xdrec pretrain")
    assert not (prepared.root / "embeddings").exists()


# ----------------------------------------------------------------------------------------- transfer


def test_transfer_trains_the_named_strategies_only(chain: Chain) -> None:
    rows = chain.json("transfer-two")
    assert [r["strategy"] for r in rows] == ["fusion", "mapping"]
    assert all(
        set(r)
        == {
            "strategy",
            "path",
            "serves",
            "epochs_run",
            "valid",
            "seconds",
            "world_size",
            "tuned",
            "falls_back",
            "blend_weights",
            "refit",
        }
        for r in rows
    )
    assert chain.models_after["transfer-two"] == ["fusion", "mapping", "source-only", "target-only"]
    for r in rows:
        assert Path(r["path"]) == chain.ws.model_dir(r["strategy"]) and r["epochs_run"] == 1
        recorded = json.loads((Path(r["path"]) / "config.json").read_text())
        assert r["falls_back"] is recorded.get("falls_back", False)
    assert rows[1]["falls_back"] is False  # mapping never competes with the target model on warm users


def test_transfer_all_trains_every_strategy_into_the_target(chain: Chain) -> None:
    rows = chain.json("transfer-all")
    assert [r["strategy"] for r in rows] == STRATEGIES
    assert chain.models_after["transfer-all"] == sorted([*STRATEGIES, "source-only", "target-only"])
    for strategy in STRATEGIES:
        assert model_files(chain.ws, strategy)
        config = json.loads((chain.ws.model_dir(strategy) / "config.json").read_text())
        assert config["domain"] == TARGET and config["name"] == strategy


def test_transfer_unknown_strategy_is_one_line(chain: Chain) -> None:
    one_error_line(invoke(chain.ws, "transfer", "--strategy", "nope", *TRAIN), "'nope'", "fusion", "all")


def test_transfer_before_embed_says_what_to_run(chain_copy: Workspace) -> None:
    shutil.rmtree(chain_copy.root / "embeddings")
    shutil.rmtree(chain_copy.model_dir("fusion"))
    one_error_line(invoke(chain_copy, "transfer", "--strategy", "fusion", *TRAIN), "xdrec embed")
    assert not chain_copy.model_dir("fusion").exists()


def test_transfer_mapping_without_target_model_names_the_right_command(chain_copy: Workspace) -> None:
    shutil.rmtree(chain_copy.model_dir("target-only"))
    one_error_line(invoke(chain_copy, "transfer", "--strategy", "mapping", *TRAIN), "--domain")


def test_every_strategy_on_short_histories(tmp_path: Path) -> None:
    """Every sequence shorter than max_len: no tensor may assume a full-width batch (fusion and joint did)."""
    ws = Workspace(tmp_path / "ws")
    write_raw(ws.raw_dir, SyntheticConfig(n_users=200, max_length=30))  # every sequence < max_len 50
    ok(invoke(ws, "prepare", SOURCE, TARGET))
    ok(invoke(ws, "pretrain", *TRAIN, "--quiet"))
    ok(invoke(ws, "pretrain", "--domain", TARGET, *TRAIN, "--quiet"))
    ok(invoke(ws, "embed", "--device", "cpu"))
    ok(invoke(ws, "transfer", "--strategy", "all", *TRAIN, "--quiet"))
    assert all(model_files(ws, s) for s in STRATEGIES)
    assert {r["model"] for r in evaluate_json(ws)["results"]} == {"popularity", "target-only", *STRATEGIES}


# ----------------------------------------------------------------------------------------- evaluate


def evaluate_json(ws: Workspace, *args: str) -> dict:
    doc = json.loads(
        ok(invoke(ws, "evaluate", "--device", "cpu", "--bootstrap", "20", "--json", *args)).stdout
    )
    (report,) = doc["reports"]  # one shape whatever the number of domains: here one
    return report


def test_evaluate_json_is_full_ranking_per_model_and_segment(chain: Chain) -> None:
    report = evaluate_json(chain.ws)
    assert report["protocol"] == "full" and report["domain"] == TARGET
    rows = report["results"]
    assert {"model", "domain", "segment", "users", *METRICS_AT_10} <= set(rows[0])
    assert all(set(r) == set(rows[0]) for r in rows)
    assert {r["model"] for r in rows} == {"popularity", "target-only", *STRATEGIES}  # not source-only
    assert {"warm", "cold", "all"} <= {r["segment"] for r in rows}
    assert all(r["domain"] == TARGET and r["protocol"] == "full" for r in rows)
    scored = [r for r in rows if r["scored"]]
    assert all(0.0 <= r[m] <= 1.0 for r in scored for m in METRICS_AT_10)
    # target-only and finetune read target history alone: no numbers for cold users, who have none.
    assert {(r["model"], r["segment"]) for r in rows if not r["scored"]} == {
        ("target-only", "cold"),
        ("finetune", "cold"),
    }
    assert all(r[m] is None for r in rows if not r["scored"] for m in METRICS_AT_10)
    assert all(r["users"] > 0 for r in rows)
    saved = json.loads((chain.ws.reports_dir / DATASET / TARGET / "report.json").read_text())
    assert saved == report
    assert (chain.ws.reports_dir / DATASET / TARGET / "report.png").stat().st_size > 0


def test_evaluate_table_names_the_protocol_and_the_files(chain: Chain) -> None:
    result = ok(invoke(chain.ws, "evaluate", "--device", "cpu", "--bootstrap", "20"))
    out = flat(result.stdout)
    assert "fullranking" in out and "SAMPLED" not in out
    assert flat(f"report: {chain.ws.reports_dir / DATASET / TARGET / 'report.json'}") in out
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(("all:", "warm:", "cold:"))]
    assert len(verdicts) == 3 and all("target-only" in v or "popularity" in v for v in verdicts)
    assert flat(str(chain.ws.reports_dir / DATASET / TARGET / "report.png")) in out
    for segment in ("warm", "cold", "all"):
        assert f"\n{segment} " in result.stdout  # a segment's first row starts its line


def test_evaluate_and_embed_show_progress_on_stderr_and_quiet_silences_it(chain: Chain) -> None:
    shown = ok(invoke(chain.ws, "evaluate", "--device", "cpu", "--bootstrap", "20", "--json"))
    json.loads(shown.stdout)  # the bars never reach stdout
    shown = ok(invoke(chain.ws, "evaluate", "--device", "cpu", "--bootstrap", "20"))
    err = flat(shown.stderr)
    assert flat(f"evaluate target-only on {TARGET}") in err and "users" in err
    assert "evaluate target-only" not in shown.stdout
    quiet = ok(invoke(chain.ws, "evaluate", "--device", "cpu", "--bootstrap", "20", "-q"))
    assert quiet.stderr == "" and quiet.stdout == shown.stdout  # the results, and nothing else
    embedded = ok(invoke(chain.ws, "embed", "--device", "cpu"))
    assert "embedsource-only" in flat(embedded.stderr) and "embed source-only" not in embedded.stdout


def test_evaluate_several_cut_offs(chain: Chain) -> None:
    report = evaluate_json(chain.ws, "--k", "5", "--k", "20")
    assert report["ks"] == [5, 20]
    expected = {"HR@5", "NDCG@5", "Recall@5", "HR@20", "NDCG@20", "Recall@20", "MRR"}
    assert set(report["metrics"]) == expected
    for row in report["results"]:
        assert expected <= set(row) and not METRICS_AT_10 - {"MRR"} & set(row)
        if not row["scored"]:
            continue  # cannot rank these users: no numbers
        assert row["HR@5"] <= row["HR@20"] and row["Recall@5"] <= row["Recall@20"]


def test_evaluate_sampled_is_labelled_and_never_replaces_full(chain: Chain) -> None:
    headline = chain.ws.reports_dir / DATASET / TARGET / "report.json"
    full = headline.read_bytes() if headline.exists() else None
    report = evaluate_json(chain.ws, "--negatives", "50")
    assert report["protocol"] == "sampled-50" and report["negatives"] == 50
    assert {r["protocol"] for r in report["results"]} == {"sampled-50"}
    assert "full" not in json.dumps(report)
    assert (
        json.loads((chain.ws.reports_dir / DATASET / TARGET / "report-sampled-50.json").read_text()) == report
    )
    assert (headline.read_bytes() if headline.exists() else None) == full
    table = ok(invoke(chain.ws, "evaluate", "--device", "cpu", "--bootstrap", "0", "--negatives", "50"))
    assert "SAMPLED" in table.stdout and "Full ranking" not in table.stdout


def test_evaluate_unknown_model_is_one_line(chain: Chain) -> None:
    one_error_line(invoke(chain.ws, "evaluate", "--model", "nope", "--device", "cpu"), "'nope'")


def test_evaluating_the_source_keeps_the_target_report(chain_copy: Workspace) -> None:
    evaluate_json(chain_copy)
    source = evaluate_json(chain_copy, "--domain", SOURCE)
    assert source["domain"] == SOURCE
    saved = json.loads((chain_copy.reports_dir / DATASET / TARGET / "report.json").read_text())
    assert saved["domain"] == TARGET


def test_evaluate_table_shows_whole_model_names_at_80_columns(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "console", Console(width=80))
    result = ok(invoke(chain.ws, "evaluate", "--device", "cpu", "--bootstrap", "20"))
    for model in ("popularity", "target-only", *STRATEGIES):
        assert model in result.stdout, model


# ---------------------------------------------------------------------------------------- recommend


def test_recommend_json_gives_k_new_target_items(chain: Chain) -> None:
    target_items = set(Dataset.from_workspace(chain.ws).items(TARGET)["item"].to_list())
    for user, (segment, has) in target_users(chain.ws).items():
        rec = json.loads(
            ok(invoke(chain.ws, "recommend", user, "--k", "15", "--device", "cpu", "--json")).stdout
        )
        assert rec["user"] == user and rec["segment"] == segment
        assert rec["model"] in {"popularity", "target-only", *STRATEGIES}
        items = [i["item"] for i in rec["items"]]
        assert [i["rank"] for i in rec["items"]] == list(range(1, 16)) and len(set(items)) == 15
        assert set(items) <= target_items and not set(items) & has, f"{user} already has some"
        scores = [i["score"] for i in rec["items"]]
        assert scores == sorted(scores, reverse=True)


def test_recommend_ranks_with_the_whole_history(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    import xdrec.pipeline as pipeline
    from xdrec.store import load_scorer

    seen: list[torch.Tensor] = []

    def spy(*args, **kwargs):  # the real model, with its inputs recorded
        scorer = load_scorer(*args, **kwargs)
        scores = scorer.scores

        def record(user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            seen.append(history)
            return scores(user_ids, history)

        scorer.scores = record  # type: ignore[method-assign]
        return scorer

    monkeypatch.setattr(pipeline, "load_scorer", spy)
    data = Dataset.from_workspace(chain.ws)
    held_out = data.users.filter(pl.col("cold")).sort("user_id").row(0, named=True)
    pipeline.recommend(chain.ws, held_out["user"], strategy="target-only", device="cpu")
    everything = (
        data.interactions()
        .filter(pl.col("user_id") == held_out["user_id"], pl.col("domain") == TARGET)
        .sort("timestamp", maintain_order=True)
        .collect()
    )
    assert set(everything["split"]) == {"test"}  # a hold-out user: every target item is in test
    history = seen[0][0]
    assert history[history != 0].tolist() == everything["item_id"].to_list()


def test_recommend_picks_the_model_per_segment_on_validation(chain_copy: Workspace) -> None:
    from xdrec.serving import FILE, MIN_USERS, select_models
    from xdrec.store import serves

    data = Dataset.from_workspace(chain_copy)
    selection = select_models(chain_copy, data, "cpu")
    assert {"all", "warm", "cold"} <= set(selection.best)
    for segment, best in selection.best.items():
        judged = segment if selection.users[segment] >= MIN_USERS or segment == "cold" else "all"
        serving = [
            m for m in selection.scores[segment] if serves(chain_copy, m, segment.replace("all", "warm"))
        ]
        assert best in serving
        assert selection.scores[judged][best] == max(selection.scores[judged][m] for m in serving)
    assert selection.best["cold"] not in ("target-only", "finetune")  # they cannot serve cold users
    assert set(selection.scores["warm"]) == {"popularity", "target-only", *STRATEGIES}
    for user, (segment, _) in target_users(chain_copy).items():
        rec = json.loads(ok(invoke(chain_copy, "recommend", user, "--device", "cpu", "--json")).stdout)
        assert rec["model"] == selection.model_for(segment)
    path = chain_copy.reports_dir / DATASET / TARGET / FILE
    assert json.loads(path.read_text())["best"] == selection.best

    # Chosen on validation only: scrambling every test-split item (within its domain) changes nothing (the
    # cache is cleared).
    interactions = data.path / "interactions.parquet"
    table = pl.read_parquet(interactions)
    test = pl.col("split") == "test"
    scrambled = pl.col("item_id").reverse().over("domain", "split")
    table.with_columns(item_id=pl.when(test).then(scrambled).otherwise("item_id")).write_parquet(interactions)
    path.unlink()
    assert select_models(chain_copy, data, "cpu") == selection
    # A retrained model invalidates the cached choice.
    ok(invoke(chain_copy, "pretrain", "--domain", TARGET, *TRAIN, "--seed", "7"))
    again = select_models(chain_copy, data, "cpu")
    assert again.models["target-only"] != selection.models["target-only"] and not selection.skipped
    # ... and mapping, built on the old target-only, can no longer be compared: it is left out, saying why.
    assert "mapping" in again.skipped and "mapping" not in again.scores["warm"]


def test_recommend_table_and_a_chosen_strategy(chain: Chain) -> None:
    user = next(iter(target_users(chain.ws)))
    result = ok(invoke(chain.ws, "recommend", user, "--strategy", "fusion", "--k", "3", "--device", "cpu"))
    assert user in result.stdout and "fusion" in result.stdout
    ranks = [line.split()[0] for line in result.stdout.splitlines()[3:] if line.strip()]
    assert ranks == ["1", "2", "3"], result.stdout  # title, header, rule, then one row per item


def test_recommend_unknown_user_is_one_line(chain: Chain) -> None:
    one_error_line(invoke(chain.ws, "recommend", "NOT-A-USER", "--device", "cpu", "--json"), "NOT-A-USER")


def test_recommend_with_a_source_model_is_refused(chain: Chain) -> None:
    user = next(iter(target_users(chain.ws)))  # the warm one
    result = invoke(chain.ws, "recommend", user, "--strategy", "source-only", "--k", "50", "--device", "cpu")
    one_error_line(result, "source-only", code=2)
    # A name that is no model: the error lists the ones that can recommend.
    result = invoke(chain.ws, "recommend", user, "--strategy", "nosuch", "--device", "cpu")
    line = one_error_line(result, "'nosuch'", "popularity", "target-only", "bag", code=2)
    assert "source-only" not in line.split("choose from")[1]


def test_recommend_for_many_users_writes_one_parquet(chain: Chain, tmp_path: Path) -> None:
    users = target_users(chain.ws)
    singles = {
        user: json.loads(
            ok(invoke(chain.ws, "recommend", user, "--k", "4", "--device", "cpu", "--json")).stdout
        )
        for user in users
    }
    listing = tmp_path / "users.txt"
    listing.write_text("\n".join([*users, next(iter(users))]) + "\n")  # a repeated id counts once
    out = tmp_path / "recs.parquet"
    result = ok(
        invoke(
            chain.ws, "recommend", "--users", str(listing), "--out", str(out), "--k", "4", "--device", "cpu"
        )
    )
    assert f"{len(users)} users" in result.stdout and str(out) in flat(result.stdout)
    recs = pl.read_parquet(out)
    assert recs.columns == ["user", "segment", "model", "rank", "item", "score"]
    assert recs["user"].unique(maintain_order=True).to_list() == list(users)
    for user, single in singles.items():  # the same answer as one user at a time
        mine = recs.filter(pl.col("user") == user)
        assert mine["rank"].to_list() == [1, 2, 3, 4]
        assert mine["item"].to_list() == [i["item"] for i in single["items"]]
        assert mine["score"].to_list() == pytest.approx([i["score"] for i in single["items"]], rel=1e-5)
        assert set(mine["model"]) == {single["model"]} and set(mine["segment"]) == {single["segment"]}
    everyone = tmp_path / "all.parquet"
    ok(invoke(chain.ws, "recommend", "--all", "--out", str(everyone), "--k", "2", "--device", "cpu"))
    assert pl.read_parquet(everyone)["user"].n_unique() == Dataset.from_workspace(chain.ws).users.height
    # Usage errors: no --out, two ways of naming users, an unknown user in the file.
    one_error_line(invoke(chain.ws, "recommend", "--all"), "--out", code=2)
    one_error_line(invoke(chain.ws, "recommend", "u1", "--all", "--out", str(out)), "one user id", code=2)
    listing.write_text("NOT-A-USER\n")
    before = out.read_bytes()
    one_error_line(invoke(chain.ws, "recommend", "--users", str(listing), "--out", str(out)), "NOT-A-USER")
    assert out.read_bytes() == before  # nothing half-written


# ---------------------------------------------------------------------------------- status, users


def test_status_lists_every_part_of_the_workspace(chain: Chain) -> None:
    found = json.loads(ok(invoke(chain.ws, "status", "--json")).stdout)
    assert found["dataset"] == DATASET and found["workspace"] == str(chain.ws.root)
    (dataset,) = found["datasets"]
    assert dataset["current"] and (dataset["source"], dataset["target"]) == (SOURCE, TARGET)
    assert dataset["options"] == Dataset.from_workspace(chain.ws).manifest["parameters"]
    models = {m["model"]: m for m in found["models"]}
    assert list(models) == ["source-only", "target-only", *STRATEGIES]  # report order
    assert {m["state"] for m in models.values()} == {"fresh"} and models["bag"]["reason"] == ""
    assert models["source-only"]["fix"] == f"xdrec pretrain --domain {SOURCE}"
    assert models["mapping"]["fix"] == "xdrec transfer --strategy mapping"
    assert set(models["joint"]["domains"]) == {SOURCE, TARGET} and models["bag"]["domains"] == [TARGET]
    assert [(e["name"], e["state"]) for e in found["embeddings"]] == [("source-only", "fresh")]
    on_disk = sorted(chain.ws.reports_dir.glob("*/*/report*.json"))
    assert [r["path"] for r in found["reports"]] == [str(p) for p in on_disk]
    assert found["tuning"] == []
    table = ok(invoke(chain.ws, "status")).stdout
    assert table.splitlines()[0] == f"models of {DATASET}: {len(models)} fresh"  # the answer first
    assert "xdrec transfer --strategy bag" in table and "tuning studies: none" in table


def test_status_says_what_is_stale_or_missing_and_how_to_rebuild_it(chain_copy: Workspace) -> None:
    ok(invoke(chain_copy, "pretrain", *TRAIN, "--seed", "7"))  # a new source model, under the others
    shutil.rmtree(chain_copy.model_dir("bag"))
    found = json.loads(ok(invoke(chain_copy, "status", "--json")).stdout)
    states = {m["model"]: (m["state"], m["reason"]) for m in found["models"]}
    assert states["source-only"] == states["target-only"] == ("fresh", "")
    assert states["bag"] == ("missing", "not trained")
    stale = [m for m in STRATEGIES if m != "bag"]
    assert all(states[m] == ("stale", "source-only was retrained since") for m in stale)
    assert [(e["name"], e["state"]) for e in found["embeddings"]] == [("source-only", "stale")]
    first = ok(invoke(chain_copy, "status")).stdout.splitlines()[0]
    assert first.startswith(f"models of {DATASET}: 2 fresh, {len(stale)} stale, 1 missing (`xdrec run`")


def test_status_of_no_workspace_or_an_unknown_dataset_is_one_line(chain: Chain, tmp_path: Path) -> None:
    one_error_line(invoke(tmp_path / "nothing", "status"), "no workspace at", str(tmp_path / "nothing"))
    one_error_line(invoke(chain.ws, "status", "--dataset", "A+B"), "no prepared dataset 'A+B'")
    empty = Workspace(tmp_path / "empty")
    empty.root.mkdir()
    found = json.loads(ok(invoke(empty, "status", "--json")).stdout)
    assert found["dataset"] is None and found["models"] == found["datasets"] == found["reports"] == []
    assert ok(invoke(empty, "status")).stdout.startswith("no prepared dataset: run `xdrec prepare")


def test_users_lists_raw_ids_by_segment(chain: Chain) -> None:
    data = Dataset.from_workspace(chain.ws)
    # Brute force: each user's interactions per domain, and the segment recommend serves them as.
    counts: dict[tuple[str, str], int] = {}
    events = data.interactions().collect().join(data.users.select("user_id", "user"), on="user_id")
    for user, domain in events.select("user", "domain").iter_rows():
        counts[user, domain] = counts.get((user, domain), 0) + 1
    expected = []
    for user, cold in data.users.sort("user_id").select("user", "cold").iter_rows():
        source, target = counts.get((user, SOURCE), 0), counts.get((user, TARGET), 0)
        segment = "target-only" if source == 0 else "warm" if target else "cold"
        expected.append(
            {"user": user, "segment": segment, "held_out": cold, "source": source, "target": target}
        )
    everyone = json.loads(ok(invoke(chain.ws, "users", "--limit", "1000000", "--json")).stdout)["users"]
    assert everyone == expected
    cold = json.loads(ok(invoke(chain.ws, "users", "--segment", "cold", "--limit", "3", "--json")).stdout)
    assert cold["users"] == [u for u in expected if u["segment"] == "cold"][:3]
    held = json.loads(ok(invoke(chain.ws, "users", "--segment", "held-out", "--json")).stdout)["users"]
    assert held == [u for u in expected if u["held_out"]][:10]  # --limit 10 by default
    for user, (segment, _) in target_users(chain.ws).items():  # the segment recommend serves them as
        assert next(u for u in expected if u["user"] == user)["segment"] == segment
    table = ok(invoke(chain.ws, "users", "--segment", "cold", "--limit", "2")).stdout
    assert all(u["user"] in table for u in cold["users"][:2]) and cold["users"][2]["user"] not in table
    one_error_line(
        invoke(chain.ws, "users", "--segment", "lukewarm"), "warm, cold, target-only, held-out", code=2
    )
    one_error_line(invoke(chain.ws, "users", "--limit", "0"), "--limit", code=2)


# --------------------------------------------------------------------------------------- workspace


def test_xdrec_workspace_env_var_is_honoured(chain: Chain, tmp_path: Path) -> None:
    user = next(iter(target_users(chain.ws)))
    args = ["recommend", user, "--k", "3", "--device", "cpu", "--json"]
    by_env = ok(runner.invoke(app, args, env={"XDREC_WORKSPACE": str(chain.ws.root)}))
    by_option = ok(invoke(chain.ws, *args))
    assert json.loads(by_env.stdout) == json.loads(by_option.stdout)
    # --workspace wins over the environment; an empty environment workspace is named in the error.
    ok(invoke(chain.ws, *args, env={"XDREC_WORKSPACE": str(tmp_path / "other")}))
    result = runner.invoke(app, args, env={"XDREC_WORKSPACE": str(tmp_path / "other")})
    one_error_line(result, str(tmp_path / "other"), "xdrec prepare")


def test_default_workspace_is_xdrec_workspace_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["embed", "--device", "cpu"], env={"XDREC_WORKSPACE": None})
    one_error_line(result, "xdrec-workspace")


def test_root_help_shows_the_default_workspace() -> None:
    assert "xdrec-workspace" in ok(runner.invoke(app, ["--help"])).stdout


# -------------------------------------------------------------------------------------------- fetch


def test_fetch_imports_a_local_file(tmp_path: Path) -> None:
    source = tmp_path / "reviews.jsonl"
    lines = [
        {"user_id": "u1", "parent_asin": "i1", "rating": 5.0, "timestamp": 1_600_000_000_000},
        {"user_id": "u2", "parent_asin": "i1", "rating": 4.0, "timestamp": 1_600_000_001_000},
        {"user_id": "u1", "parent_asin": "i2", "rating": None, "timestamp": 1_600_000_002_000},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ws = Workspace(tmp_path / "ws")
    (result,) = json.loads(ok(invoke(ws, "fetch", "Local", "--source", str(source), "--json")).stdout)
    assert result == {
        "domain": "Local",
        "path": str(ws.raw("Local")),
        "rows": 3,
        "users": 2,
        "items": 2,
        "skipped": 0,
        "origin": str(source),
    }
    raw = pl.read_parquet(ws.raw("Local"))
    assert raw.columns[:4] == ["user", "item", "rating", "timestamp"] and raw.height == 3
    one_error_line(
        invoke(ws, "fetch", "Local", "--source", str(tmp_path / "missing.jsonl")), "does not exist"
    )


def test_fetch_unknown_category_fails_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[str] = []
    monkeypatch.setattr(amazon, "_download_hub", lambda filename, *a, **k: downloads.append(filename))
    ws = tmp_path / "ws"
    one_error_line(invoke(ws, "fetch", "Bookz"), "'Bookz'", "did you mean 'Books'", "--source")
    one_error_line(invoke(ws, "fetch", "Books", "Nope"), "'Nope'", "Amazon Reviews 2023")  # Books comes first
    assert downloads == [] and not (ws / "raw").exists()


# ---------------------------------------------------------------------------------------------- run


@dataclass
class Ran:
    ws: Workspace
    downloads: Path
    first: Result
    second: Result
    report_after_first: bytes
    models_after_first: dict[str, float]  # mtimes


RUN = ("run", SOURCE, TARGET, *TRAIN, "--patience", "1")


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """`xdrec run` twice with the same arguments on raw files in a folder (--source DIR)."""
    root = tmp_path_factory.mktemp("run")
    downloads = root / "downloads"
    write_raw(downloads, SYNTHETIC)
    ws = Workspace(root / "ws")
    first = ok(invoke(ws, *RUN, "--source", str(downloads), "--json"))
    report = (ws.reports_dir / DATASET / TARGET / "report.json").read_bytes()
    mtimes = {p.parent.name: p.stat().st_mtime for p in (ws.root / "models").glob("*/model.safetensors")}
    second = ok(invoke(ws, *RUN, "--source", str(downloads), "--quiet"))
    return Ran(ws, downloads, first, second, report, mtimes)


def test_run_does_every_stage_and_prints_the_report(ran: Ran) -> None:
    (report,) = json.loads(ran.first.stdout)["reports"]
    assert report["protocol"] == "full" and report["domain"] == TARGET
    rows = report["results"]
    assert {r["model"] for r in rows} == {"popularity", "target-only", *DEFAULT}
    assert {"warm", "cold", "all"} <= {r["segment"] for r in rows}
    assert all(set(r) >= METRICS_AT_10 for r in rows)
    # --json: no log, no progress; warnings only (a 1-epoch model ends while validation still improves)
    assert all(line.startswith("warning: ") for line in ran.first.stderr.splitlines())
    ws = ran.ws
    assert ws.raw(SOURCE).exists() and ws.raw(TARGET).exists()
    assert (ws.dataset_dir(DATASET) / "manifest.json").exists()
    assert all(model_files(ws, m) for m in ("source-only", "target-only", *DEFAULT))
    assert ws.embeddings("source-only").exists()
    assert json.loads(ran.report_after_first) == report
    assert (ws.reports_dir / DATASET / TARGET / "report.png").exists()


def test_a_second_identical_run_reuses_every_stage(ran: Ran) -> None:
    log = [line.removeprefix("›").strip() for line in ran.second.stderr.strip().splitlines()]
    stages = [line.split(":")[0] for line in log]
    assert stages == [
        "fetch", "prepare", "overlap", "pretrain", "pretrain", "embed",
        *["transfer"] * len(DEFAULT), "evaluate",
    ]  # fmt: skip
    # overlap is a report, evaluate is always recomputed (cheap); every other stage is reused.
    assert all("reused" in line for line in log if not line.startswith(("overlap", "evaluate"))), log
    mtimes = {p.parent.name: p.stat().st_mtime for p in (ran.ws.root / "models").glob("*/model.safetensors")}
    assert mtimes == ran.models_after_first
    assert (ran.ws.reports_dir / DATASET / TARGET / "report.json").read_bytes() == ran.report_after_first
    assert "full ranking of" in ran.second.stdout and "\ncold " in ran.second.stdout


def test_run_rejects_an_unknown_strategy_before_any_stage(tmp_path: Path) -> None:
    result = invoke(tmp_path / "ws", *RUN, "--source", str(tmp_path), "--strategy", "nope")
    one_error_line(result, "'nope'")
    assert not (tmp_path / "ws").exists()


def test_run_with_a_missing_source_folder_is_one_error(tmp_path: Path) -> None:
    result = invoke(tmp_path / "ws", *RUN, "--source", str(tmp_path / "nowhere"), "--quiet")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in result.stderr


def test_run_rejects_a_bad_cut_off_before_any_stage(ran: Ran) -> None:
    result = invoke(ran.ws, *RUN, "--source", str(ran.downloads), "--k", "0", "--quiet")
    assert result.exit_code == 2, result.output  # a value out of range: a usage error
    assert result.stderr.strip().splitlines() == ["error: cut-offs K must be positive integers, got [0]"]


def test_run_with_negatives_keeps_the_full_ranking_headline(ran: Ran) -> None:
    result = ok(invoke(ran.ws, *RUN, "--source", str(ran.downloads), "--negatives", "20", "--json"))
    full, sampled = json.loads(result.stdout)["reports"]  # the headline first
    assert (full["protocol"], sampled["protocol"]) == ("full", "sampled-20")
    assert (ran.ws.reports_dir / DATASET / TARGET / "report-sampled-20.json").exists()


def test_run_by_history_adds_the_warm_users_by_history_length(ran: Ran) -> None:
    result = ok(invoke(ran.ws, *RUN, "--source", str(ran.downloads), "--by-history", "--json"))
    segments = {row["segment"] for row in json.loads(result.stdout)["reports"][0]["results"]}
    assert "warm" in segments and segments & set(HISTORY_SEGMENTS.values())
    evaluated = ok(invoke(ran.ws, "evaluate", "--device", "cpu", "--bootstrap", "0", "--by-history"))
    assert "warm 8+" in evaluated.stdout or "warm 5-7" in evaluated.stdout


def _rerun(result: Result) -> list[str]:
    """The stages a `run --quiet` did again: its stage lines less overlap, evaluate and the reused ones."""
    log = [line.removeprefix("›").strip() for line in result.stderr.strip().splitlines()]
    # Warnings (a 1-epoch model ends still improving) show under --quiet too; the stages are the question.
    stages = [line for line in log if not line.startswith(("overlap", "evaluate", "warning:"))]
    return [line for line in stages if "reused" not in line]


def test_a_changed_option_reruns_only_what_it_affects(ran: Ran, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(ran.ws.root, ws.root)
    result = ok(invoke(ws, *RUN, "--source", str(ran.downloads), "--mapping-loss", "mse", "--quiet"))
    log, rerun = result.stderr, _rerun(result)
    assert rerun == ["transfer: mapping"], log
    assert json.loads((ws.model_dir("mapping") / "config.json").read_text())["mapping_loss"] == "mse"
    result = ok(
        invoke(
            ws, *RUN, "--source", str(ran.downloads), "--mapping-loss", "mse", "--bag-members", "2", "--quiet"
        )
    )
    log, rerun = result.stderr, _rerun(result)
    assert rerun == ["transfer: bag"], log
    assert json.loads((ws.model_dir("bag") / "config.json").read_text())["bag"]["members"] == 2


def _rerun_stages(ws: Workspace, downloads: Path, *options: str) -> list[str]:
    return _rerun(ok(invoke(ws, *RUN, "--source", str(downloads), *options, "--quiet")))


def test_a_retrained_source_model_reruns_embed_and_every_strategy(ran: Ran, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(ran.ws.root, ws.root)
    # As if source-only had been retrained by hand with the same settings into other weights.
    config = ws.model_dir("source-only") / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"fingerprint": "0123456789abcdef"}))
    notes = ("not better than", "trained again")  # a fallback, a refit: what a retraining says of itself
    retrained = [line for line in _rerun_stages(ws, ran.downloads) if not any(n in line for n in notes)]
    assert retrained == ["embed: source-only user vectors", *(f"transfer: {s}" for s in DEFAULT)]
    assert _rerun_stages(ws, ran.downloads) == []  # and now everything is current again


def test_a_finetune_from_before_its_fallback_is_retrained(ran: Ran, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(ran.ws.root, ws.root)
    # A finetune checkpoint of an earlier xdrec: it named no target model (it did not compare with one).
    config = ws.model_dir("finetune") / "config.json"
    old = {k: v for k, v in json.loads(config.read_text()).items() if k not in ("target_model", "falls_back")}
    config.write_text(json.dumps(old))
    stages = _rerun_stages(ws, ran.downloads)
    falls_back = json.loads(config.read_text())["falls_back"]  # run's log says when it does
    said = "transfer: finetune not better than the target model on validation (paired 95% CI above 0)"
    refit = "transfer: finetune: then trained again with the validation items as labels too"
    assert stages[0] == "transfer: finetune" and len(stages) == 2 + falls_back
    assert sum(line.startswith(said) for line in stages) == falls_back
    assert stages[-1].startswith(refit)


def test_re_embedding_with_the_same_source_model_retrains_no_strategy(ran: Ran, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(ran.ws.root, ws.root)
    ws.embeddings("source-only").unlink()
    assert _rerun_stages(ws, ran.downloads) == ["embed: source-only user vectors"]


def test_every_stage_run_help_names_is_in_its_log(ran: Ran) -> None:
    help_text = ok(runner.invoke(app, ["run", "--help"])).stdout
    stages = ("fetch", "prepare", "overlap", "pretrain", "embed", "transfer", "evaluate")
    named = [s for s in stages if s in help_text.split("Arguments")[0]]
    logged = {line.removeprefix("›").strip().split(":")[0] for line in ran.second.stderr.splitlines()}
    assert set(named) <= logged, set(named) - logged


# --------------------------------------------------------------------------------------------- demo


DEMO_SMALL = ("--users", "600", "--epochs", "1", "--device", "cpu")


def test_demo_runs_everything_in_the_given_workspace(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    result = ok(invoke(ws, "demo", *DEMO_SMALL, "--quiet"))
    assert flat(f"demo workspace: {ws.root}") in flat(result.stderr)
    assert flat("Synthetic data, not real reviews") in flat(result.stderr)
    assert "full ranking" in result.stdout and flat(f"workspace: {ws.root}") in flat(result.stdout)
    assert ws.raw(SOURCE).exists() and ws.raw(TARGET).exists()
    assert all(model_files(ws, m) for m in ("source-only", "target-only", *DEFAULT))
    saved = json.loads((ws.reports_dir / DATASET / TARGET / "report.json").read_text())
    assert {r["model"] for r in saved["results"]} == {"popularity", "target-only", *DEFAULT}
    # Again with --json: every stage reused, stdout exactly the saved report.
    again = ok(invoke(ws, "demo", *DEMO_SMALL, "--json"))
    shown = json.loads(again.stdout)
    assert shown.pop("workspace") == str(ws.root)
    assert shown == {"reports": [saved]} and again.stderr == ""
