"""Transfer strategies end to end on synthetic data: leakage, segments, recommend, beating baselines."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from xdrec.checkpoint import BUILT_FROM, VALIDATION_WEIGHTS, load_tensors
from xdrec.cli import app
from xdrec.data.dataset import Dataset
from xdrec.data.prepare import PrepareConfig, prepare
from xdrec.data.synthetic import SyntheticConfig, write_raw
from xdrec.embedding import embed, load_user_vectors
from xdrec.errors import XdrecError
from xdrec.evaluation import HISTORY_SEGMENTS, EvaluateConfig, per_user_metrics
from xdrec.fit import Plan
from xdrec.options import Choice, check, option
from xdrec.pipeline import evaluate, recommend
from xdrec.pretraining import pretrain
from xdrec.scoring import pad_left
from xdrec.sequence_scorer import load_backbone
from xdrec.store import load_scorer
from xdrec.strategies import (
    DEFAULT,
    STRATEGIES,
    TransferConfig,
    defaults_for,
    parse_strategies,
    strategy_inputs,
    transfer,
)
from xdrec.strategies.base import TRAINING, ScoringInputs, Strategy, TransferContext, TransferResult
from xdrec.strategies.fallback import BLEND_WEIGHTS, WarmBlend
from xdrec.training import Examples, TrainConfig
from xdrec.tuning import defaults, space
from xdrec.workspace import Workspace, read_json

SYNTHETIC = SyntheticConfig(n_users=1200)
FAST = TrainConfig(epochs=3, patience=2, batch_size=128, lr=2e-3, seed=0, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Synthetic data, prepared, with source-only, target-only, embeddings and every strategy trained."""
    ws = Workspace(tmp_path_factory.mktemp("transfer") / "ws")
    source, target = write_raw(ws.raw_dir, SYNTHETIC)
    prepare(ws, source, target, PrepareConfig(cold_start=0.2))
    pretrain(ws, domain=source, train_config=FAST, progress=False)
    pretrain(ws, domain=target, train_config=FAST, progress=False)
    embed(ws, device="cpu")
    transfer(ws, ["all"], config=TransferConfig(train=FAST), progress=False)
    return ws


def _plan(ws: Workspace, strategy: str, train: TrainConfig = FAST) -> Plan:
    """What `strategy` hands the trainer, built through the public interface."""
    data = Dataset.from_workspace(ws)
    ctx, inputs = strategy_inputs(ws, data, STRATEGIES[strategy], TransferConfig(train=train))
    return STRATEGIES[strategy].build(ctx, TransferConfig(train=train), inputs)


def _examples_seen(ws: Workspace, strategy: str) -> dict[str, torch.Tensor]:
    """The tensors `strategy` hands the trainer: its plan's examples, and those it is refitted on."""
    plan = _plan(ws, strategy)
    seen = {"inputs": plan.examples.inputs, "labels": plan.examples.labels, **plan.examples.extras}
    if plan.refit is not None:
        seen |= {"refit_inputs": plan.refit.inputs, "refit_labels": plan.refit.labels}
    return seen


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_cold_start_target_rows_never_reach_training(
    trained: Workspace, strategy: str, tmp_path: Path
) -> None:
    """Deleting the cold users' target rows from the dataset changes nothing any trainer sees."""
    with_rows = _examples_seen(trained, strategy)
    data = Dataset.from_workspace(trained)
    cold = data.users.filter("cold")["user_id"]
    events = data.interactions().collect()
    cold_target = (pl.col("domain") == data.target) & pl.col("user_id").is_in(cold.implode())
    assert events.filter(cold_target).height > 0
    # A copy of the workspace whose dataset lacks those rows (same manifest, so models still load).
    copy = Workspace(tmp_path / "ws")
    shutil.copytree(trained.root, copy.root)
    events.filter(~cold_target).write_parquet(copy.dataset_dir(data.name) / "interactions.parquet")
    without_rows = _examples_seen(copy, strategy)
    assert with_rows.keys() == without_rows.keys()
    for key in with_rows:
        assert torch.equal(with_rows[key], without_rows[key]), (
            f"{strategy}: {key} depends on cold target rows"
        )


@pytest.mark.parametrize(("examples", "splits"), [("", ["train"]), ("refit_", ["train", "valid"])])
def test_joint_learns_every_next_item_of_the_merged_timeline(
    trained: Workspace, examples: str, splits: list[str]
) -> None:
    """Each user's examples are their merged training timeline (both domains, by time, source first at a
    tie; source items 1..n_source, target items after them), shifted by one: checked row by row against
    the timeline rebuilt in Python from the interactions table. The examples it is refitted on are the
    same with the validation items too."""
    seen = _examples_seen(trained, "joint")
    inputs, labels = seen[f"{examples}inputs"], seen[f"{examples}labels"]
    data = Dataset.from_workspace(trained)
    n_source, width = data.n_items(data.source), inputs.shape[1]
    rows = data.interactions().filter(pl.col("split").is_in(splits)).collect()
    timelines: dict[int, list[tuple[int, int, int]]] = {}
    for user, domain, item, time in rows.select("user_id", "domain", "item_id", "timestamp").iter_rows():
        token = item if domain == data.source else item + n_source
        timelines.setdefault(user, []).append((time, token, token))
    expected = [[t for _, _, t in sorted(events)] for _, events in sorted(timelines.items())]
    expected = [t for t in expected if len(t) > 1]
    assert len(expected) == len(inputs)
    for row, timeline in enumerate(expected):
        assert labels[row][labels[row] != 0].tolist() == timeline[1:][-width:]
        assert inputs[row][inputs[row] != 0].tolist() == timeline[:-1][-width:]
    assert (labels > n_source).any() and ((labels > 0) & (labels <= n_source)).any()  # both domains
    assert getattr(_plan(trained, "joint").loss_fn, "__name__", None) == "two_domain_sampled"


def test_joint_is_one_model_that_scores_both_domains(trained: Workspace) -> None:
    data = Dataset.from_workspace(trained)
    config = read_json(trained.model_dir("joint") / "config.json")
    assert config["domains"] == list(data.domains)
    assert not trained.model_dir("joint-reverse").exists()
    for domain in data.domains:
        cases = data.eval_cases(domain, "test").head(8)
        users = torch.tensor(cases["user_id"].to_list())
        scores = load_scorer(trained, "joint", data, "cpu", domain).scores(
            users, pad_left(cases["history"].to_list())
        )
        assert scores.shape == (8, data.n_items(domain) + 1) and torch.isfinite(scores[:, 1:]).all()
    # each domain's blend with that domain's single-domain model was chosen on validation: the best
    # weight, the smaller at a tie; weight 0 (the single-domain model alone) is a fallback
    assert set(config["blend_weights"]) == set(config["valid_by_weight"]) == set(data.domains)
    for domain, tried in config["valid_by_weight"].items():
        best = max(tried, key=lambda w: (tried[w], -float(w)))
        assert config["blend_weights"][domain] == float(best)
    assert sorted(config["falls_back_in"]) == sorted(d for d, w in config["blend_weights"].items() if w == 0)


def test_joint_is_refitted_and_validation_sees_the_weights_it_chose(trained: Workspace) -> None:
    """The saved joint was trained again with the validation items as labels, for the epochs validation
    chose; the weights validation chose stay beside it, and choices on validation load those."""
    data = Dataset.from_workspace(trained)
    folder = trained.model_dir("joint")
    config = read_json(folder / "config.json")
    assert config["refit"]["epochs"] == config["best_epoch"] >= 1
    refitted = load_tensors(folder / "model.safetensors")
    chosen = load_tensors(folder / VALIDATION_WEIGHTS)
    assert refitted.keys() == chosen.keys()
    assert any(not torch.equal(refitted[k], chosen[k]) for k in refitted)
    cases = data.eval_cases(data.target, "valid").head(16)
    users = torch.tensor(cases["user_id"].to_list())
    history = torch.zeros(len(users), 1, dtype=torch.long)  # as if cold: joint's own scores, no blend
    served = load_scorer(trained, "joint", data, "cpu").scores(users, history)
    validated = load_scorer(trained, "joint", data, "cpu", for_validation=True).scores(users, history)
    assert not torch.allclose(served, validated)
    again = load_scorer(trained, "joint", data, "cpu", for_validation=True).scores(users, history)
    assert torch.equal(validated, again)
    # a model that was not refitted is ranked on validation with the weights it is served with
    plain = load_scorer(trained, "bag", data, "cpu")
    assert torch.equal(
        plain.scores(users, history),
        load_scorer(trained, "bag", data, "cpu", for_validation=True).scores(users, history),
    )


def test_strategies_are_built_on_the_weights_validation_chose_and_served_with_the_refitted_model(
    trained: Workspace,
) -> None:
    """The SASRecs (and finetune and fusion, served beside them) are refitted too. A strategy is built,
    and chosen on validation, with the weights validation chose; served, its users with target history get
    the refitted target-only's scores, and its cold users the same scores as on validation (the mapping
    was trained against the chosen weights)."""
    data = Dataset.from_workspace(trained)
    for name in ("source-only", "target-only", "finetune", "fusion"):  # the sequence models of one domain
        config = read_json(trained.model_dir(name) / "config.json")
        assert config["refit"]["epochs"] == config["best_epoch"] >= 1
        assert (trained.model_dir(name) / VALIDATION_WEIGHTS).exists()
    served = load_backbone(trained, "target-only", data, "cpu")
    chosen = load_backbone(trained, "target-only", data, "cpu", for_validation=True)
    cases = data.eval_cases(data.target, "test")
    users = torch.from_numpy(cases["user_id"].to_numpy().astype("int64"))
    history = pad_left(cases["history"].to_list())
    warm = (history != 0).any(1)
    assert warm.any() and (~warm).any()
    assert not torch.allclose(served.scores(users, history), chosen.scores(users, history))
    mapping = load_scorer(trained, "mapping", data, "cpu").scores(users, history)
    on_validation = load_scorer(trained, "mapping", data, "cpu", for_validation=True).scores(users, history)
    torch.testing.assert_close(mapping[warm], served.scores(users, history)[warm])
    torch.testing.assert_close(on_validation[warm], chosen.scores(users, history)[warm])
    torch.testing.assert_close(mapping[~warm], on_validation[~warm])
    # user vectors come from the chosen weights: what the strategies trained on them were validated with
    source = load_backbone(trained, "source-only", data, "cpu", for_validation=True).model
    some = data.context_sequences(data.source).head(8)
    with torch.no_grad():
        expected = source.user_vector(pad_left(some["items"].to_list(), source.cfg.max_len)).float()
    vectors = load_user_vectors(trained, data).vectors
    ids = torch.from_numpy(some["user_id"].to_numpy().astype("int64"))
    torch.testing.assert_close(vectors[ids], expected, atol=1e-5, rtol=1e-4)


def test_a_blend_mixes_the_two_models_scores_for_users_with_history(trained: Workspace) -> None:
    data = Dataset.from_workspace(trained)
    cases = data.eval_cases(data.target, "test")
    users = torch.from_numpy(cases["user_id"].to_numpy().astype("int64"))
    history = pad_left(cases["history"].to_list())
    own, target = (load_scorer(trained, name, data, "cpu") for name in ("fusion", "target-only"))
    own = getattr(own, "own", own)  # fusion's own scores, whether or not it fell back
    mine, theirs = own.scores(users, history), target.scores(users, history)
    has_history = (history != 0).any(1)
    assert has_history.any() and (~has_history).any()
    for weight in BLEND_WEIGHTS:
        got = WarmBlend(own, target, "blend", weight).scores(users, history)
        expected = (1 - weight) * theirs + weight * mine
        torch.testing.assert_close(got[has_history], expected[has_history])
        assert torch.equal(got[~has_history], mine[~has_history])  # no history: its own scores
    assert WarmBlend(own, target, "b", 0.0).defers_to == "target-only"
    assert WarmBlend(own, target, "b", 0.5).defers_to is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        WarmBlend(own, target, "b", 1.5)


def test_transfer_names_the_blend_and_the_refit_validation_chose() -> None:
    result = TransferResult("joint", Path("joint"), None, frozenset(), blend_weights={"A": 0.5, "B": 1.0})  # type: ignore[arg-type]
    [note] = result.notes()
    assert "A 0.5" in note and "B" not in note
    alone = TransferResult("joint", Path("joint"), None, frozenset(), blend_weights={"A": 0.0, "B": 1.0})  # type: ignore[arg-type]
    assert alone.notes() == []  # a fallback or the model alone: no blend to name
    refitted = replace(alone, refit={"epochs": 12, "sequences": 40, "seconds": 3.5})
    [note] = refitted.notes()
    assert "validation items" in note and "12 epochs" in note


def test_joint_scores_from_the_history_it_is_given(trained: Workspace) -> None:
    """The scorer rebuilds the timeline from the target history passed in (valid or test time): a shorter
    history gives other scores, and the same history the same scores."""
    data = Dataset.from_workspace(trained)
    scorer = load_scorer(trained, "joint", data, "cpu", data.target)
    cases = data.eval_cases(data.target, "test").filter(pl.col("history").list.len() > 1).head(16)
    users = torch.tensor(cases["user_id"].to_list())
    full = pad_left(cases["history"].to_list())
    shorter = pad_left([h[:-1] for h in cases["history"].to_list()])
    assert not torch.allclose(scorer.scores(users, full), scorer.scores(users, shorter))
    again = scorer.scores(users, shorter)
    assert torch.equal(scorer.scores(users, shorter), again)  # deterministic in eval mode


def test_every_strategy_is_evaluated_per_segment(trained: Workspace) -> None:
    report, paths = evaluate(trained, EvaluateConfig(bootstrap=50, device="cpu"))
    rows = report.rows
    assert set(report.models) == {"popularity", "target-only", *STRATEGIES}
    assert {"warm", "cold", "all"} <= set(rows["segment"])
    assert rows.filter(pl.col("segment") == "cold")["users"].min() > 0
    assert paths["plot"].exists() and paths["json"].exists()


def test_warm_users_by_history_length(trained: Workspace) -> None:
    """`--by-history`: the warm users again, each once, under the segment of their history's length."""
    report, _ = evaluate(trained, EvaluateConfig(bootstrap=50, device="cpu", by_history=True))
    rows = report.rows.filter(pl.col("model") == "bag")
    buckets = rows.filter(pl.col("segment").is_in(list(HISTORY_SEGMENTS.values())))
    warm = rows.filter(pl.col("segment") == "warm")
    assert buckets.height >= 2 and buckets["users"].sum() == warm["users"].item()
    assert report.segments.index("warm") < report.segments.index(buckets["segment"][0])
    # Each bucket's NDCG@10 is the mean over exactly its users, and it is paired with target-only.
    data = Dataset.from_workspace(trained)
    cases = data.eval_cases(data.target, "test")
    per_user = per_user_metrics(load_scorer(trained, "bag", data, "cpu"), cases, data.n_items(data.target))
    lengths = cases.select("user_id", n=pl.col("history").list.len(), warm=pl.col("segment") == "warm")
    short = per_user.join(lengths, on="user_id").filter(pl.col("warm") & pl.col("n").is_between(3, 4))
    row = buckets.filter(pl.col("segment") == "warm 3-4")
    assert row["users"].item() == short.height
    assert row["NDCG@10"].item() == pytest.approx(short["NDCG@10"].mean())
    assert row["delta_against"].item() == "target-only" and row["delta"].item() is not None
    plain, _ = evaluate(trained, EvaluateConfig(bootstrap=50, device="cpu"))
    assert not set(plain.segments) & set(HISTORY_SEGMENTS.values())  # only when asked for


def test_sasrec_and_transfer_beat_the_baselines(trained: Workspace) -> None:
    report, _ = evaluate(trained, EvaluateConfig(bootstrap=0, device="cpu"))
    warm, cold = (_ndcg_by_model(report.rows, segment) for segment in ("warm", "cold"))
    assert warm["target-only"] > 2 * warm["popularity"], warm  # the sequential signal is learned
    best = max(cold[s] for s in ("mapping", "fusion", "joint", "bag"))
    assert best > cold["popularity"] and cold["target-only"] is None, cold  # it cannot rank cold users


def _ndcg_by_model(rows: pl.DataFrame, segment: str) -> dict[str, float]:
    return dict(rows.filter(pl.col("segment") == segment).select("model", "NDCG@10").iter_rows())


def test_recommend_never_returns_an_item_the_user_has(trained: Workspace) -> None:
    data = Dataset.from_workspace(trained)
    items = pl.read_parquet(data.path / "items.parquet").filter(pl.col("domain") == data.target)
    every = data.interactions().collect()
    events = every.filter(pl.col("domain") == data.target)
    has_source = set(every.filter(pl.col("domain") == data.source)["user_id"].to_list())
    users = data.users.join(events.select("user_id").unique(), on="user_id")
    for cold in (True, False):
        for row in users.filter(pl.col("cold") == cold).head(5).iter_rows(named=True):
            rec = recommend(trained, row["user"], k=20, device="cpu")
            has = set(
                events.filter(pl.col("user_id") == row["user_id"]).join(items, on="item_id")["item"].to_list()
            )
            got = [i["item"] for i in rec.items]
            assert len(got) == 20 and not has & set(got)
            # From the whole history: a cold-start hold-out user's target items (all in test) count too.
            expected = "warm" if row["user_id"] in has_source else "target-only"
            assert rec.segment == expected
    with pytest.raises(XdrecError, match="unknown user"):
        recommend(trained, "NOT-A-USER")


def test_joint_is_a_default_on_the_mixed_split_only() -> None:
    assert defaults_for("mixed") == (*DEFAULT, "joint")
    assert defaults_for("loo") == defaults_for("timestamp") == DEFAULT and "joint" not in DEFAULT
    assert parse_strategies(["default"], "mixed") == parse_strategies([], "mixed") == [*DEFAULT, "joint"]
    assert parse_strategies(list(DEFAULT), "mixed") == list(DEFAULT)  # named strategies stay as named


def test_parse_strategies() -> None:
    assert parse_strategies(["all"]) == list(STRATEGIES)
    assert parse_strategies([]) == parse_strategies(["default"]) == list(DEFAULT)
    assert parse_strategies(["default", "fusion"]) == [*DEFAULT, "fusion"]
    assert parse_strategies(["joint", "fusion", "joint"]) == ["joint", "fusion"]
    with pytest.raises(XdrecError, match="unknown strategy"):
        parse_strategies(["nope"])


def _scores(ws: Workspace, name: str) -> torch.Tensor:
    data = Dataset.from_workspace(ws)
    cases = data.eval_cases(data.target, "test").head(64)
    users = torch.from_numpy(cases["user_id"].to_numpy().astype("int64"))
    return load_scorer(ws, name, data, "cpu").scores(users, pad_left(cases["history"].to_list()))


def test_the_fallback_follows_the_recorded_validation(trained: Workspace) -> None:
    for name in ("finetune", "fusion"):
        config = read_json(trained.model_dir(name) / "config.json")
        compared = config["valid_against_target"]
        delta, low, high = compared["delta"]
        assert low <= delta <= high and delta == pytest.approx(compared["own"] - compared["target"]), name
        assert config["falls_back"] == (low <= 0), name  # served only where validation shows it better


@pytest.mark.parametrize("strategy", ["finetune", "joint"])
def test_a_strategy_validation_does_not_prefer_serves_target_only_to_users_with_history(
    trained: Workspace, tmp_path: Path, strategy: str
) -> None:
    # A training that barely moves from its random item embeddings loses to target-only: it falls back.
    copy = Workspace(tmp_path / "ws")
    shutil.copytree(trained.root, copy.root)
    barely = TransferConfig(train=replace(FAST, epochs=1, lr=1e-6))
    (result,) = transfer(copy, [strategy], config=barely, progress=False)
    assert result.falls_back
    data = Dataset.from_workspace(copy)
    cases = data.eval_cases(data.target, "test")
    users = torch.from_numpy(cases["user_id"].to_numpy().astype("int64"))
    history = pad_left(cases["history"].to_list())
    scorer = load_scorer(copy, strategy, data, "cpu")
    got, target = (
        scorer.scores(users, history),
        load_scorer(copy, "target-only", data, "cpu").scores(users, history),
    )
    has_history = (history != 0).any(1)
    assert has_history.any() and (~has_history).any()  # warm and cold users
    assert torch.equal(got[has_history], target[has_history])
    assert torch.equal(got[~has_history], scorer.own.scores(users, history)[~has_history])  # its own for cold


def test_a_finetune_trained_before_the_fallback_still_loads(trained: Workspace, tmp_path: Path) -> None:
    copy = Workspace(tmp_path / "ws")
    shutil.copytree(trained.root, copy.root)
    path = copy.model_dir("finetune") / "config.json"
    config = read_json(path)
    for key in ("target_model", "falls_back", "valid_against_target"):
        del config[key]
    del config[BUILT_FROM]["target-only"]
    path.write_text(json.dumps(config))
    data = Dataset.from_workspace(copy)
    own = load_backbone(copy, "finetune", data, "cpu")  # its own weights, as before the fallback existed
    cases = data.eval_cases(data.target, "test").head(64)
    users = torch.from_numpy(cases["user_id"].to_numpy().astype("int64"))
    assert torch.equal(_scores(copy, "finetune"), own.scores(users, pad_left(cases["history"].to_list())))


def test_transfer_needs_embeddings_first(trained: Workspace, tmp_path: Path) -> None:
    copy = Workspace(tmp_path / "ws")
    shutil.copytree(trained.root, copy.root)
    shutil.rmtree(copy.root / "embeddings")
    with pytest.raises(XdrecError, match="xdrec embed"):
        transfer(copy, ["fusion"], config=TransferConfig(train=replace(FAST, epochs=1)), progress=False)


# ------------------------------------------------------------------------------------------- lineage


def test_strategies_refuse_inputs_retrained_after_them(trained: Workspace, tmp_path: Path) -> None:
    """A retrained source model (then re-embedded) or target model makes the strategies built on it stale."""
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(trained.root, ws.root)
    data = Dataset.from_workspace(ws)
    pretrain(ws, domain=data.source, train_config=replace(FAST, seed=1), progress=False)
    # The old vectors no longer match the source model: transfer says to re-embed first ...
    with pytest.raises(XdrecError, match="re-run `xdrec embed`"):
        transfer(ws, ["fusion"], config=TransferConfig(train=FAST), progress=False)
    # ... and until then fusion still scores with the vectors it was trained on.
    load_scorer(ws, "fusion", data, "cpu")
    embed(ws, device="cpu")
    for name in ("fusion", "mapping"):
        with pytest.raises(XdrecError, match=f"earlier source-only .* `xdrec transfer --strategy {name}`"):
            load_scorer(ws, name, data, "cpu")
    load_scorer(ws, "joint", data, "cpu")  # reads no source model at scoring time
    transfer(ws, ["fusion", "mapping"], config=TransferConfig(train=FAST), progress=False)
    load_scorer(ws, "fusion", data, "cpu")
    load_scorer(ws, "mapping", data, "cpu")
    # mapping scores against the target-only model's item table; the others were compared with it (or
    # blend with it) on validation, so a retrained target-only makes every strategy stale.
    pretrain(ws, domain=data.target, train_config=replace(FAST, seed=1), progress=False)
    for name in STRATEGIES:
        with pytest.raises(XdrecError, match="earlier target-only"):
            load_scorer(ws, name, data, "cpu")


# ------------------------------------------------------------------------------ the extension point


class _SourceLinear(torch.nn.Module):
    """A toy model: a linear map of the source vector, scored against its own target item table."""

    def __init__(self, source_dim: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.project = torch.nn.Linear(source_dim, dim)
        self.items = torch.nn.Embedding(n_items + 1, dim)

    def forward(self, inputs: torch.Tensor, source_vector: torch.Tensor) -> torch.Tensor:
        return self.project(source_vector)[:, None, :]  # (B, 1, D)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight


class _ToyScorer:
    name = "toy"

    def __init__(self, model: _SourceLinear, vectors) -> None:
        self.model, self.vectors = model, vectors

    @torch.no_grad()
    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.model(history, self.vectors.vectors[user_ids])[:, 0] @ self.model.item_embeddings().T


@dataclass(frozen=True)
class _ToyOptions:
    dim: int = option(16, "toy: width of the projection.", low=1, tune=Choice((8, 16)))

    def __post_init__(self) -> None:
        check(self, "toy")


class _Toy(Strategy):
    """Written against the public contract alone: xdrec.strategies, xdrec.options and xdrec.fit."""

    name = "toy"
    serves = frozenset({"cold"})
    needs = frozenset({"source_vectors"})
    Options = _ToyOptions

    def build(self, ctx: TransferContext, config: TransferConfig, inputs: ScoringInputs) -> Plan:
        n_items = ctx.dataset.n_items(ctx.target)
        pairs = ctx.dataset.train_sequences(ctx.target).explode("items")
        users = torch.from_numpy(pairs["user_id"].to_numpy().astype("int64"))
        labels = torch.from_numpy(pairs["items"].to_numpy().astype("int64"))[:, None]
        examples = Examples(torch.ones_like(labels), labels, {"source_vector": ctx.vectors.vectors[users]})
        model = _SourceLinear(ctx.vectors.dim, n_items, config.options(_ToyOptions).dim)
        return Plan(model, examples, None, record={"n_items": n_items})

    def load(self, checkpoint, inputs: ScoringInputs) -> _ToyScorer:
        dim = checkpoint.config["toy"]["dim"]  # its options, as `record` wrote them
        model = _SourceLinear(inputs.vectors.dim, checkpoint.config["n_items"], dim)
        model.load_state_dict(checkpoint.state_dict())
        return _ToyScorer(model.eval(), inputs.vectors)


def test_a_new_strategy_is_one_class_and_one_registry_line(
    trained: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/architecture.md's recipe, followed literally: the class above and the registry line below."""
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(trained.root, ws.root)
    monkeypatch.setitem(STRATEGIES, "toy", _Toy())  # the registry line
    # Its option is on the command line of transfer and run, and tune searches it.
    for command in ("transfer", "run"):
        assert "--toy-dim" in CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
    assert "toy" in CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "200"}).stdout
    assert space("toy") == {**{k: space("target-only")[k] for k in TRAINING}, "toy.dim": Choice((8, 16))}
    assert defaults("toy")["toy.dim"] == 16
    given = CliRunner().invoke(
        app,
        ["--workspace", str(ws.root), "transfer", "--strategy", "toy", "--toy-dim", "8", "--epochs", "2",
         "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert given.exit_code == 0, given.output
    bad = CliRunner().invoke(
        app, ["--workspace", str(ws.root), "transfer", "--strategy", "toy", "--toy-dim", "0"]
    )
    assert bad.exit_code == 2 and "--toy-dim" in bad.stderr
    recorded = json.loads((ws.model_dir("toy") / "config.json").read_text())
    assert recorded["toy"] == {"dim": 8}
    (result,) = transfer(ws, ["toy"], config=TransferConfig(train=replace(FAST, epochs=2)), progress=False)
    assert result.serves == {"cold"} and (result.model_dir / "model.safetensors").exists()
    assert json.loads((ws.model_dir("toy") / "config.json").read_text())["toy"] == {"dim": 16}
    report, _ = evaluate(ws, EvaluateConfig(bootstrap=0, device="cpu"), models=["toy"])
    cold = _ndcg_by_model(report.rows, "cold")
    assert set(cold) == {"popularity", "toy"} and 0 <= cold["toy"] <= 1
    # The lineage every strategy records comes from the contract: re-embedding from a retrained source
    # model makes the toy stale, exactly like the built-in strategies.
    data = Dataset.from_workspace(ws)
    pretrain(ws, domain=data.source, train_config=replace(FAST, seed=3), progress=False)
    embed(ws, device="cpu")
    with pytest.raises(XdrecError, match=r"earlier source-only .* `xdrec transfer --strategy toy`"):
        load_scorer(ws, "toy", data, "cpu")
