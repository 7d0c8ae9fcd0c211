"""Checkpoints (safetensors + JSON) and `pretrain` end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from xdrec.checkpoint import (
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_checkpoint,
    save_checkpoint,
    save_tensors,
)
from xdrec.data.dataset import Dataset
from xdrec.data.prepare import PrepareConfig, prepare
from xdrec.data.synthetic import SyntheticConfig, write_raw
from xdrec.errors import XdrecError
from xdrec.models.sasrec import SASRecConfig
from xdrec.pretraining import pretrain
from xdrec.scoring import pad_left
from xdrec.sequence_scorer import load_backbone
from xdrec.sequence_training import training_examples
from xdrec.training import TrainConfig
from xdrec.workspace import Workspace

SMALL = SASRecConfig(0, hidden=16, blocks=1, heads=2, max_len=10)
FAST = TrainConfig(epochs=2, batch_size=64, device="cpu", threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A prepared synthetic dataset (~300 users, 80 + 60 items) and a source-only SASRec trained on it."""
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    synthetic = SyntheticConfig(n_users=300, source_items=80, target_items=60, n_topics=8)
    write_raw(ws.raw_dir, synthetic)
    prepare(ws, synthetic.source_domain, synthetic.target_domain, PrepareConfig(min_user=3, min_item=3))
    return ws, pretrain(ws, model=SMALL, train_config=FAST, progress=False)


def reference_windows(sequences: list[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows spelled out: from the most recent end, max_len + 1 items overlapping by one."""
    inputs, labels = [], []
    for seq in sequences:
        chunks = []
        end = len(seq)
        while end > 1:
            chunks.append(seq[max(0, end - max_len - 1) : end])
            end -= max_len
        for chunk in reversed(chunks):  # oldest window first
            pad = [0] * (max_len + 1 - len(chunk))
            inputs.append(pad + chunk[:-1])
            labels.append(pad + chunk[1:])
    return np.array(inputs), np.array(labels)


def test_training_windows_cover_every_transition_once() -> None:
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 50, n)) for n in [1, 2, 5, 6, 7, 11, 12, 13, 30]]
    frame = pl.DataFrame(
        {"user_id": range(len(seqs)), "items": seqs}, schema={"user_id": pl.Int32, "items": pl.List(pl.Int32)}
    )
    got = training_examples(frame, max_len=5)
    want_inputs, want_labels = reference_windows(seqs, 5)
    assert np.array_equal(got.inputs.numpy(), want_inputs)
    assert np.array_equal(got.labels.numpy(), want_labels)
    assert int((got.labels > 0).sum()) == sum(len(s) - 1 for s in seqs)  # each transition exactly once


def test_pretrain_writes_a_complete_checkpoint(trained) -> None:
    ws, result = trained
    assert result.name == "source-only" and result.domain == "Synthetic_Books"
    files = {p.name for p in result.model_dir.iterdir()}
    # the refitted model, and the weights validation chose before its refit (what strategies build on)
    assert files == {"model.safetensors", "validation.safetensors", "config.json", "metrics.jsonl"}
    # Only an interrupted run needs its resumable state (several times the model's size): it is gone.
    assert not (ws.run_dir("source-only") / "train_state").exists()
    config = json.loads((result.model_dir / "config.json").read_text())
    dataset = Dataset.from_workspace(ws)
    assert config["kind"] == "sasrec" and config["domain"] == "Synthetic_Books" and config["role"] == "source"
    assert config["dataset"] == {"name": dataset.name, "manifest_hash": dataset.manifest_hash}
    assert config["n_items"] == config["model"]["n_items"] == dataset.n_items("Synthetic_Books") == 80
    assert config["loss"] == "ce" and "auto" in config["loss_reason"] and config["epochs_run"] == 2
    assert config["best_valid"]["NDCG@10"] == result.training.best_metric > 0
    assert config["xdrec_version"]
    assert config["refit"]["epochs"] == config["best_epoch"] == result.refit["epochs"]
    lines = [json.loads(line) for line in (result.model_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(0 <= line["NDCG@10"] <= 1 for line in lines)
    # safetensors: an 8-byte little-endian header length, then a JSON header; no pickle anywhere
    raw = (result.model_dir / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert "item_emb.weight" in json.loads(raw[8 : 8 + header_len])


def test_loaded_model_scores_exactly_as_trained(trained) -> None:
    ws, result = trained
    dataset = Dataset.from_workspace(ws)
    loaded = load_backbone(ws, "source-only", dataset, device="cpu")
    history = pad_left([[1, 2, 3], [], list(range(1, 31))])  # empty, and longer than max_len
    users = torch.arange(3)
    assert loaded.name == "source-only" and loaded.domain == "Synthetic_Books"
    scores = loaded.scores(users, history)
    assert scores.shape == (3, 81) and torch.equal(scores, result.scorer.scores(users, history))
    assert torch.equal(scores[2], loaded.scores(users, history[:, -10:])[2])  # truncated to max_len


def test_a_checkpoint_refuses_another_dataset(trained, tmp_path: Path) -> None:
    ws, _ = trained
    copy = tmp_path / "Synthetic_Books+Synthetic_Movies"
    source = Dataset.from_workspace(ws).path
    copy.mkdir()
    for f in source.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parameters"]["seed"] = 7  # re-prepared differently: item ids may mean other items
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        XdrecError, match=r"trained on dataset Synthetic_Books\+Synthetic_Movies .*xdrec pretrain"
    ):
        load_backbone(ws, "source-only", Dataset.load(copy))


def test_missing_or_wrong_kind_of_model_is_a_clear_error(trained, tmp_path: Path) -> None:
    ws, _ = trained
    dataset = Dataset.from_workspace(ws)
    with pytest.raises(XdrecError, match="run `xdrec pretrain`"):
        load_backbone(ws, "nope", dataset)
    save_checkpoint(tmp_path / "other", {"w": torch.zeros(2)}, {"kind": "popularity", "dataset": {}})
    with pytest.raises(XdrecError, match="'popularity' model, not 'sasrec'"):
        read_checkpoint(tmp_path / "other", kind="sasrec")


def test_pretrain_on_the_target_is_target_only(trained) -> None:
    ws, _ = trained
    result = pretrain(
        ws,
        domain="Synthetic_Movies",
        model=SMALL,
        train_config=TrainConfig(epochs=1, device="cpu", threads=1),
        progress=False,
        validate=lambda model: 0.5,
    )
    assert result.name == "target-only" and result.n_items == 60 and result.training.best_metric == 0.5
    with pytest.raises(XdrecError, match="not in dataset"):
        pretrain(ws, domain="Nope", progress=False)


def test_optimizer_state_round_trips_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, betas=(0.9, 0.98))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    save_tensors(tmp_path / "opt.safetensors", tensors)
    (tmp_path / "opt.json").write_text(json.dumps(meta))

    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW(twin.parameters(), lr=0.5)
    optimizer_from_tensors(
        opt2, load_tensors(tmp_path / "opt.safetensors"), json.loads((tmp_path / "opt.json").read_text())
    )
    assert opt2.param_groups[0]["betas"] == (0.9, 0.98) and opt2.param_groups[0]["lr"] == 0.1
    x = torch.randn(4, 3)
    for o, m in ((opt, net), (opt2, twin)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(net.weight, twin.weight) and torch.equal(net.bias, twin.bias)


def test_unreadable_weights_are_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(XdrecError, match="not a readable safetensors file"):
        load_tensors(tmp_path / "bad.safetensors")


def test_the_retrain_command_follows_the_record(tmp_path: Path) -> None:
    """finetune loads as a backbone but is retrained by transfer; a reverse model names its domain."""
    from xdrec.checkpoint import Checkpoint
    from xdrec.store import rebuild_command

    def command(name: str, **record: str) -> str:
        return Checkpoint(
            tmp_path / name, {"kind": "sasrec", "domain": "T", "role": "target", **record}
        ).retrain_command

    assert command("target-only") == "xdrec pretrain --domain T"
    assert command("finetune", strategy="finetune") == "xdrec transfer --strategy finetune"
    reverse = command("mapping-reverse", kind="mapping", strategy="mapping", domain="S", role="source")
    assert reverse == "xdrec transfer --strategy mapping --domain S"

    class Pair:  # what rebuild_command reads of a Dataset
        source, target = "S", "T"

    data: Dataset = Pair()  # type: ignore[assignment]
    assert rebuild_command(data, "mapping-reverse") == "xdrec transfer --strategy mapping --domain S"
    assert rebuild_command(data, "finetune") == "xdrec transfer --strategy finetune"
    assert rebuild_command(data, "source-only") == "xdrec pretrain --domain S"
