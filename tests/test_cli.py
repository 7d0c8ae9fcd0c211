"""Every command through the CLI (CliRunner): help, exit codes, one failure path, the files it writes."""

from __future__ import annotations

import json

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from xdrec.cli import app
from xdrec.workspace import Workspace

runner = CliRunner()
COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def invoke(ws: Workspace, *args: str):
    return runner.invoke(app, ["--workspace", str(ws.root), *args])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 3
    assert "--quiet" in result.output and "-q" in result.output  # scripts pass -q to every command


def test_prepare_then_overlap_chain_through_the_workspace(small_workspace: Workspace) -> None:
    result = invoke(small_workspace, "prepare", "Src", "Tgt", "--min-item", "3", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert (
        manifest["source"] == "Src"
        and (small_workspace.dataset_dir("Src+Tgt") / "interactions.parquet").exists()
    )

    result = invoke(small_workspace, "overlap", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["domains"]) == {"Src", "Tgt"}
    assert report["overlap_users"] == manifest["overlap_users"]
    assert {"users", "items", "interactions"} <= set(report["domains"]["Tgt"])

    table = invoke(small_workspace, "overlap")
    assert table.exit_code == 0 and "Jaccard" in table.stdout


def test_user_errors_are_one_line_and_exit_1(small_workspace: Workspace) -> None:
    result = invoke(small_workspace, "prepare", "Src", "Src")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_stage_without_its_input_says_what_to_run(tmp_path) -> None:
    result = runner.invoke(app, ["--workspace", str(tmp_path / "empty"), "overlap"])
    assert result.exit_code == 1 and "xdrec prepare" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert runner.invoke(app, ["prepare", "--no-such-option"]).exit_code == 2
