"""Evaluating both domains under the mixed split: sampled negatives, empty domains, the CLI's JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from test_report import OracleScorer, make_dataset
from xdrec.cli import app
from xdrec.data.dataset import Dataset
from xdrec.data.prepare import PrepareConfig, prepare
from xdrec.data.synthetic import SyntheticConfig, write_raw
from xdrec.evaluation import TIE_RULE, EvaluateConfig, evaluate_scorers, sample_negatives
from xdrec.report import render_table, report_to_json, save_report
from xdrec.workspace import Workspace

SYNTHETIC = SyntheticConfig(n_users=300)
SOURCE, TARGET = SYNTHETIC.source_domain, SYNTHETIC.target_domain


def test_sampled_negatives_never_hold_an_item_the_user_has_in_that_domain(small_workspace: Workspace) -> None:
    config = PrepareConfig(min_user=3, min_item=2, split="mixed", cold_start=0.2)
    data = Dataset.load(prepare(small_workspace, "Src", "Tgt", config).path)
    events = data.interactions().collect()
    for domain in data.domains:
        owned = events.filter(pl.col("domain") == domain).group_by("user_id").agg(pl.col("item_id"))
        owned = dict(zip(owned["user_id"], (set(x) for x in owned["item_id"].to_list()), strict=True))
        cases = data.eval_cases(domain, "test")
        n_items = data.n_items(domain)
        # few negatives (the rejection sampler) and as many as the heaviest user leaves (the exact path)
        for negatives in (10, n_items - max(len(owned[u]) for u in cases["user_id"])):
            drawn = sample_negatives(cases, n_items, negatives, seed=3).numpy()
            for user, row in zip(cases["user_id"], drawn, strict=True):
                picked = row[row > 0]
                assert not set(picked.tolist()) & owned[user], (domain, user)
                assert len(set(picked.tolist())) == len(picked) == min(negatives, n_items - len(owned[user]))


def test_a_domain_with_no_test_user_is_reported_as_such(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "datasets" / "Books+Movies")  # Books has no test interaction
    report = evaluate_scorers(data, "Books", [], EvaluateConfig(bootstrap=10))
    assert report.empty and report.models == []
    doc = report_to_json(report)
    assert (
        doc["results"] == []
        and doc["note"] == "no user has a test interaction in Books: nothing to rank there"
    )
    console = Console(record=True, width=80)
    console.print(render_table(report))
    text = console.export_text()
    assert "no user has a test interaction in Books" in text and ".0000" not in text
    paths = save_report(report, tmp_path / "reports")
    assert paths["plot"].stat().st_size > 0 and json.loads(paths["json"].read_text())["results"] == []
    # a domain with users has no note, and every output states the tie rule
    full = report_to_json(
        evaluate_scorers(data, "Movies", [OracleScorer(data, "Movies")], EvaluateConfig(bootstrap=0))
    )
    assert "note" not in full and full["ties"] == TIE_RULE and full["results"]


@pytest.fixture(scope="module")
def mixed_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Synthetic data prepared with --split mixed, SASRec pretrained on both domains and fusion trained in
    both directions, all for one epoch."""
    ws = Workspace(tmp_path_factory.mktemp("mixed") / "ws")
    write_raw(ws.raw_dir, SYNTHETIC)
    runner = CliRunner()
    train = ("--device", "cpu", "--epochs", "1")
    for args in (
        ("prepare", SOURCE, TARGET, "--split", "mixed", "--cold-start", "0"),
        ("pretrain", *train),
        ("pretrain", "--domain", TARGET, *train),
        ("embed", "--device", "cpu"),
        ("embed", "--model", "target-only", "--device", "cpu"),
        ("transfer", "--strategy", "fusion", *train, "--quiet"),
        ("transfer", "--strategy", "fusion", "--domain", SOURCE, *train, "--quiet"),
    ):
        result = runner.invoke(app, ["--workspace", str(ws.root), *args])
        assert result.exit_code == 0, result.output
    return ws


def test_evaluate_reports_both_domains_under_mixed(mixed_workspace: Workspace) -> None:
    ws = mixed_workspace
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "evaluate", "--bootstrap", "0", "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)["reports"]
    data = Dataset.from_workspace(ws)
    assert [r["domain"] for r in reports] == [SOURCE, TARGET]
    expected_models = {
        SOURCE: ["popularity", "source-only", "fusion-reverse"],
        TARGET: ["popularity", "target-only", "fusion"],
    }
    for report in reports:
        domain = report["domain"]
        rows = [r for r in report["results"] if r["segment"] == "all"]
        assert [r["model"] for r in rows] == expected_models[domain]
        assert all(r["domain"] == domain for r in report["results"])
        # each domain's users are its test users, as the manifest counts them ("all" leaves out "cold": here
        # users whose only interaction in the domain is their test item)
        users = {(r["model"], r["segment"]): r["users"] for r in report["results"]}
        cold = users.get(("popularity", "cold"), 0)
        assert users[("popularity", "all")] + cold == data.manifest["domains"][domain]["splits"]["test"]
        assert (ws.reports_dir / data.name / domain / "report.json").exists()
    # one domain on request: the same shape, one report
    one = CliRunner().invoke(
        app, ["--workspace", str(ws.root), "evaluate", "--domain", TARGET, "--bootstrap", "0", "--json"]
    )
    assert one.exit_code == 0 and [r["domain"] for r in json.loads(one.stdout)["reports"]] == [TARGET]
    wrong = CliRunner().invoke(
        app, ["--workspace", str(ws.root), "evaluate", "--domain", TARGET, "--model", "source-only"]
    )
    assert wrong.exit_code == 1 and wrong.output.startswith("error: model source-only scores another domain")


def test_both_domains_on_request_for_any_split(small_workspace: Workspace) -> None:
    prepare(small_workspace, "Src", "Tgt", PrepareConfig(min_item=3))
    args = ["--workspace", str(small_workspace.root), "evaluate", "--bootstrap", "0", "--json"]
    only_target = CliRunner().invoke(app, args)
    assert only_target.exit_code == 0 and [
        r["domain"] for r in json.loads(only_target.stdout)["reports"]
    ] == ["Tgt"]
    both = CliRunner().invoke(app, [*args, "--both-domains"])
    assert both.exit_code == 0, both.output
    assert [r["domain"] for r in json.loads(both.stdout)["reports"]] == ["Src", "Tgt"]


def test_the_reverse_direction_is_built_from_the_target_model(mixed_workspace: Workspace) -> None:
    config = json.loads((mixed_workspace.model_dir("fusion-reverse") / "config.json").read_text())
    forward = json.loads((mixed_workspace.model_dir("fusion") / "config.json").read_text())
    assert (config["domain"], config["role"], config["embeddings"]) == (SOURCE, "source", "target-only")
    assert (forward["domain"], forward["role"], forward["embeddings"]) == (TARGET, "target", "source-only")
    fingerprint = {
        name: json.loads((mixed_workspace.model_dir(name) / "config.json").read_text())["fingerprint"]
        for name in ("target-only", "source-only")
    }
    # Its vectors come from target-only; the single-domain model it competes with is source-only's.
    assert config["built_from"] == fingerprint and config["target_model"] == "source-only"


def test_the_reverse_direction_without_its_vectors_says_what_to_run(
    mixed_workspace: Workspace, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(mixed_workspace.root, ws.root)
    (ws.embeddings("target-only")).unlink()
    args = ["--workspace", str(ws.root), "transfer", "--strategy", "mapping", "--domain", SOURCE]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--epochs", "1"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: no user vectors of target-only: run `xdrec embed --model target-only` first"
    )
    assert not ws.model_dir("mapping-reverse").exists()


def test_run_reverse_trains_both_directions_on_one_dataset(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    write_raw(ws.raw_dir, SYNTHETIC)
    args = ["--workspace", str(ws.root), "run", SOURCE, TARGET, "--split", "mixed", "--cold-start", "0"]
    args += ["--strategy", "fusion", "--reverse", "--epochs", "1", "--device", "cpu", "--bootstrap", "0"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)["reports"]
    models = {r["domain"]: {row["model"] for row in r["results"]} for r in reports}
    assert models == {
        SOURCE: {"popularity", "source-only", "fusion-reverse"},
        TARGET: {"popularity", "target-only", "fusion"},
    }
    again = CliRunner().invoke(app, [*args, "--quiet"])  # nothing re-trained, the prepared dataset reused
    stages = [line.removeprefix("›").strip() for line in again.stderr.strip().splitlines()]
    assert [s for s in stages if s.startswith(("prepare", "embed", "transfer"))] == [
        f"prepare: {SOURCE}+{TARGET} unchanged, reused",
        "embed: unchanged, reused",
        "embed: target-only unchanged, reused",
        "transfer: fusion unchanged, reused",
        "transfer: fusion-reverse unchanged, reused",
    ]


def test_a_stale_reverse_strategy_names_the_command_that_retrains_it(
    mixed_workspace: Workspace, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(mixed_workspace.root, ws.root)
    config = ws.model_dir("fusion-reverse") / "config.json"  # as if built from another target-only
    config.write_text(
        json.dumps(json.loads(config.read_text()) | {"built_from": {"target-only": "0123abcd"}})
    )
    args = ["--workspace", str(ws.root), "evaluate", "--domain", SOURCE, "--model", "fusion-reverse"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert f"re-run `xdrec transfer --strategy fusion --domain {SOURCE}`" in result.output
