"""Popularity, evaluate_scorers on a toy prepared dataset, and the table / JSON / PNG outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from rich.console import Console

from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError
from xdrec.evaluation import EvaluateConfig, Report, evaluate_scorers
from xdrec.popularity import PopularityScorer
from xdrec.report import render_table, report_to_json, reports_to_json, save_report, verdict, verdict_lines

# (user_id, domain, item_id, split): Books is the source (3 items), Movies the target (5 items).
INTERACTIONS = [
    # user 0: warm in Movies
    (0, "Books", 1, "train"), (0, "Books", 2, "train"),
    (0, "Movies", 1, "train"), (0, "Movies", 2, "train"), (0, "Movies", 3, "valid"), (0, "Movies", 4, "test"),
    # user 1: cold-start hold-out, whole Movies history in test
    (1, "Books", 2, "train"), (1, "Books", 3, "train"), (1, "Movies", 2, "test"), (1, "Movies", 5, "test"),
    # user 2: Movies only
    (2, "Movies", 1, "train"), (2, "Movies", 2, "train"), (2, "Movies", 1, "valid"), (2, "Movies", 3, "test"),
    # user 3: warm
    (3, "Books", 1, "train"), (3, "Movies", 5, "train"), (3, "Movies", 1, "valid"), (3, "Movies", 2, "test"),
]  # fmt: skip


def make_dataset(root: Path) -> Dataset:
    """A prepared dataset written the way `xdrec.data.dataset` documents it."""
    root.mkdir(parents=True)
    rows = pl.DataFrame(INTERACTIONS, schema=["user_id", "domain", "item_id", "split"], orient="row")
    interactions = rows.with_columns(
        pl.col("user_id").cast(pl.Int32),
        pl.col("item_id").cast(pl.Int32),
        timestamp=pl.int_range(pl.len(), dtype=pl.Int64) * 1000,
        rating=pl.lit(5.0, dtype=pl.Float32),
    ).select("user_id", "domain", "item_id", "timestamp", "rating", "split")
    interactions.sort("domain", "user_id", "timestamp", "item_id").write_parquet(
        root / "interactions.parquet"
    )
    pl.DataFrame(
        {"user_id": [0, 1, 2, 3], "user": ["a", "b", "c", "d"], "cold": [False, True, False, False]},
        schema={"user_id": pl.Int32, "user": pl.String, "cold": pl.Boolean},
    ).write_parquet(root / "users.parquet")
    pl.DataFrame(
        {
            "domain": ["Books"] * 3 + ["Movies"] * 5,
            "item_id": [1, 2, 3, 1, 2, 3, 4, 5],
            "item": ["b1", "b2", "b3", "m1", "m2", "m3", "m4", "m5"],
        },
        schema={"domain": pl.String, "item_id": pl.Int32, "item": pl.String},
    ).write_parquet(root / "items.parquet")
    manifest = {
        "source": "Books",
        "target": "Movies",
        "domains": {"Books": {"items": 3}, "Movies": {"items": 5}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return Dataset.load(root)


class OracleScorer:
    """Knows every user's test targets: scores them 10, everything else 0."""

    name = "oracle"

    def __init__(self, dataset: Dataset, domain: str) -> None:
        cases = dataset.eval_cases(domain, "test")
        self.matrix = torch.zeros(len(dataset.users), dataset.n_items(domain) + 1)
        for user, targets in zip(cases["user_id"], cases["targets"], strict=True):
            self.matrix[user, targets.to_list()] = 10.0

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.matrix[user_ids]


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return make_dataset(tmp_path / "datasets" / "Books+Movies")


def test_popularity_scores_are_training_counts(dataset: Dataset) -> None:
    scorer = PopularityScorer.from_dataset(dataset, "Movies")
    assert scorer.name == "popularity"
    scores = scorer.scores(torch.tensor([0, 3]), torch.zeros(2, 1, dtype=torch.long))
    assert scores.shape == (2, 6)
    # Movies train: item 1 by users 0 and 2, item 2 by users 0 and 2, item 5 by user 3.
    assert scores[0].tolist() == [0, 2, 2, 0, 0, 1] and torch.equal(scores[0], scores[1])
    np.testing.assert_array_equal(scores[0].numpy(), dataset.item_counts("Movies"))


def test_evaluate_scorers_full(dataset: Dataset) -> None:
    report = evaluate_scorers(
        dataset, "Movies", [OracleScorer(dataset, "Movies")], EvaluateConfig(ks=(1, 3), bootstrap=50)
    )
    assert report.protocol == "full" and not report.sampled and report.n_items == 5
    assert report.models == ["popularity", "oracle"]
    assert report.segments == ["all", "warm", "cold", "target-only"]
    rows = {(r["model"], r["segment"]): r for r in report.rows.iter_rows(named=True)}
    assert rows[("oracle", "all")]["users"] == 3  # users 0, 2, 3: the cold user 1 only counts under cold
    assert rows[("oracle", "cold")]["users"] == 1
    assert all(rows[("oracle", s)]["NDCG@3"] == pytest.approx(1.0) for s in report.segments)
    # Popularity on the warm users (test history = train + valid, masked): user 0 sees {4: 0, 5: 1} and
    # wants 4 -> rank 2; user 3 sees {2: 2, 3: 0, 4: 0} and wants 2 -> rank 1.
    assert rows[("popularity", "warm")]["MRR"] == pytest.approx((1 / 2 + 1) / 2)
    # Ties are pessimistic: user 2 sees {3: 0, 4: 0, 5: 1} and wants 3 -> rank 3 (4 ties it and goes first).
    assert rows[("popularity", "target-only")]["MRR"] == pytest.approx(1 / 3)
    # Cold user 1 wants {2, 5}: 2 ties 1 at count 2 -> rank 2; 5 -> rank 3. NDCG@3 = (1/log2 3 + 1/2) / IDCG.
    assert rows[("popularity", "cold")]["NDCG@3"] == pytest.approx(
        (1 / np.log2(3) + 0.5) / (1 + 1 / np.log2(3))
    )
    assert rows[("popularity", "warm")]["MRR_lo"] <= rows[("popularity", "warm")]["MRR"]
    # Rows are grouped by segment, models in the given order inside each group.
    assert report.rows["segment"].to_list()[:2] == ["all", "all"]


def test_report_json_shape(dataset: Dataset) -> None:
    report = evaluate_scorers(
        dataset, "Movies", [OracleScorer(dataset, "Movies")], EvaluateConfig(bootstrap=20)
    )
    doc = report_to_json(report)
    assert doc["protocol"] == "full" and doc["ks"] == [10]
    json.dumps(doc)  # plain JSON types only
    assert len(doc["results"]) == 2 * 4
    first = doc["results"][0]
    for key in ("model", "domain", "segment", "users", "HR@10", "NDCG@10", "MRR", "Recall@10", "ci"):
        assert key in first
    assert first["domain"] == "Movies"
    lo, hi = first["ci"]["NDCG@10"]
    assert lo <= first["NDCG@10"] <= hi


def test_sampled_report_is_labelled_everywhere(dataset: Dataset, tmp_path: Path) -> None:
    report = evaluate_scorers(
        dataset, "Movies", [OracleScorer(dataset, "Movies")], EvaluateConfig(negatives=2, bootstrap=20)
    )
    assert report.protocol == "sampled-2"
    assert report_to_json(report)["protocol"] == "sampled-2"
    assert set(report.rows["protocol"]) == {"sampled-2"}
    assert "SAMPLED" in str(render_table(report).title)
    paths = save_report(report, tmp_path / "reports")
    assert paths["json"].name == "report-sampled-2.json" and paths["plot"].name == "report-sampled-2.png"


def test_save_report_writes_json_and_png(dataset: Dataset, tmp_path: Path) -> None:
    report = evaluate_scorers(
        dataset, "Movies", [OracleScorer(dataset, "Movies")], EvaluateConfig(ks=(5,), bootstrap=20)
    )
    out = tmp_path / "reports"
    paths = save_report(report, out)
    assert paths == {"json": out / "report.json", "plot": out / "report.png"}
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(report_to_json(report)))
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.png"]  # no temp files left


def test_render_table_marks_the_winner_per_segment(dataset: Dataset) -> None:
    report = evaluate_scorers(
        dataset, "Movies", [OracleScorer(dataset, "Movies")], EvaluateConfig(bootstrap=20)
    )
    table = render_table(report)
    assert table.title == "Books -> Movies: full ranking of 5 items, test split"
    console = Console(record=True, width=80)
    console.print(table)
    text = console.export_text()
    assert text.count("★ oracle") == len(report.segments)
    assert "★ popularity" not in text
    # One line per model, the headline's CI beside it, nothing cut at 80 columns.
    assert all(len(line) <= 80 for line in text.splitlines())
    assert text.count("oracle") == len(report.segments) and "…" not in text
    assert "CI" in text and text.count("1.000-1.000") == len(report.segments)


class ReverseOracle(OracleScorer):
    """Ranks every relevant item last: NDCG 0 for everyone."""

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return -self.matrix[user_ids]


def test_render_table_crowns_no_one_when_every_model_scores_zero(dataset: Dataset) -> None:
    worst, also_worst = ReverseOracle(dataset, "Movies"), ReverseOracle(dataset, "Movies")
    also_worst.name = "also-worst"
    report = evaluate_scorers(
        dataset, "Movies", [worst, also_worst], EvaluateConfig(ks=(1,), bootstrap=0), with_popularity=False
    )
    assert report.rows["NDCG@1"].max() == 0 and report.rows["HR@1"].max() == 0
    console = Console(record=True, width=80)
    console.print(render_table(report))
    text = console.export_text()
    assert "★" not in text.split("mean over users")[0]
    assert " CI " not in text  # no bootstrap, no CI column


def test_evaluate_scorers_user_errors(dataset: Dataset) -> None:
    with pytest.raises(XdrecError, match="distinct name"):
        evaluate_scorers(
            dataset, "Movies", [OracleScorer(dataset, "Movies"), OracleScorer(dataset, "Movies")]
        )
    with pytest.raises(XdrecError, match="not in dataset"):
        evaluate_scorers(dataset, "Music", [])
    report = evaluate_scorers(dataset, "Movies", [], EvaluateConfig(bootstrap=0))
    assert isinstance(report, Report) and report.models == ["popularity"]
    assert report_to_json(report)["results"][0]["ci"] == {}


# ---------------------------------------------------------------------------------------------- paired


def _per_user(values: np.ndarray, segments: list[str], metric: str = "NDCG@10") -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": np.arange(len(values)), "segment": segments, "protocol": "full", metric: values}
    )


def _bruteforce_delta(diff: np.ndarray, segment: str, replicates: int, seed: int) -> tuple[float, float]:
    """One replicate at a time: resample users, mean their paired differences; percentile interval."""
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(segment.encode()), 1])
    means = [diff[rng.integers(0, len(diff), size=len(diff))].mean() for _ in range(replicates)]
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def test_paired_deltas_match_a_bruteforce_bootstrap() -> None:
    from xdrec.evaluation import paired_deltas

    rng = np.random.default_rng(7)
    segments = list(rng.choice(["warm", "cold", "target-only"], size=60))
    base, pop, model = rng.random(60), rng.random(60), rng.random(60)
    per_user = {
        "popularity": _per_user(pop, segments),
        "target-only": _per_user(base, segments),
        "fusion": _per_user(model, segments),
    }
    deltas = paired_deltas(per_user, "target", "NDCG@10", bootstrap=300, seed=3)
    rows = {(r["model"], r["segment"]): r for r in deltas.iter_rows(named=True)}
    seg = np.array(segments)
    masks = {
        "all": seg != "cold",
        "warm": seg == "warm",
        "cold": seg == "cold",
        "target-only": seg == "target-only",
    }
    for segment, mask in masks.items():
        against = "popularity" if segment == "cold" else "target-only"
        reference = pop if segment == "cold" else base
        row = rows[("fusion", segment)]
        assert row["delta_against"] == against
        diff = model[mask] - reference[mask]
        assert row["delta"] == pytest.approx(model[mask].mean() - reference[mask].mean())
        assert (row["delta_lo"], row["delta_hi"]) == pytest.approx(_bruteforce_delta(diff, segment, 300, 3))
        # The base model against itself: exactly nothing.
        own = rows[(against, segment)]
        assert (own["delta"], own["delta_lo"], own["delta_hi"]) == (0.0, 0.0, 0.0)
    # Seeded: the same call gives the same frame, another seed other intervals.
    assert deltas.equals(paired_deltas(per_user, "target", "NDCG@10", bootstrap=300, seed=3))
    other = paired_deltas(per_user, "target", "NDCG@10", bootstrap=300, seed=4)
    assert not other["delta_lo"].equals(deltas["delta_lo"]) and other["delta"].equals(deltas["delta"])


def test_paired_deltas_without_the_base_model_say_so() -> None:
    from xdrec.evaluation import paired_deltas

    per_user = {"fusion": _per_user(np.array([0.5, 0.2]), ["warm", "cold"])}
    deltas = paired_deltas(per_user, "target", "NDCG@10", bootstrap=50)
    assert deltas["delta"].is_null().all() and deltas["delta_lo"].is_null().all()
    assert set(deltas["delta_against"]) == {"target-only", "popularity"}
    shifted = {"a": _per_user(np.zeros(2), ["warm", "warm"]), "b": _per_user(np.zeros(3), ["warm"] * 3)}
    with pytest.raises(XdrecError, match="same users"):
        paired_deltas(shifted, "target", "NDCG@10")


def test_report_marks_significant_wins_and_losses(dataset: Dataset) -> None:
    best, worst = OracleScorer(dataset, "Movies"), ReverseOracle(dataset, "Movies")
    best.name, worst.name = "target-only", "fusion"  # target-only: the base of the non-cold segments
    report = evaluate_scorers(dataset, "Movies", [best, worst], EvaluateConfig(ks=(1,), bootstrap=50))
    doc = report_to_json(report)
    rows = {(r["model"], r["segment"]): r for r in doc["results"]}
    # Every warm user: fusion 0, target-only 1 -> delta -1 with the CI [-1, -1].
    assert rows[("fusion", "warm")]["delta"] == {"against": "target-only", "NDCG@1": -1.0, "ci": [-1.0, -1.0]}
    assert rows[("target-only", "all")]["delta"] == {
        "against": "target-only",
        "NDCG@1": 0.0,
        "ci": [0.0, 0.0],
    }
    # Cold users are compared with popularity (which ranks a tied item first: NDCG@1 0).
    assert rows[("target-only", "cold")]["delta"] == {
        "against": "popularity",
        "NDCG@1": 1.0,
        "ci": [1.0, 1.0],
    }
    for (_, segment), row in rows.items():  # the delta is the difference of the two means
        base = rows[(row["delta"]["against"], segment)]
        assert row["delta"]["NDCG@1"] == pytest.approx(row["NDCG@1"] - base["NDCG@1"])
    console = Console(record=True, width=80)
    console.print(render_table(report))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines()) and "…" not in text
    table = text.split("mean over users")[0]
    assert table.count("▲") == 1 and "1.000▲" in table  # target-only over popularity on cold users
    # fusion below target-only in all, warm and target-only; popularity too, but not significantly on the
    # two warm users (it ties on one of them).
    assert table.count("▼") == 5
    assert "above / below target-only (cold: popularity)" in " ".join(text.split())


def test_report_without_the_base_model_marks_nothing(dataset: Dataset) -> None:
    report = evaluate_scorers(
        dataset, "Movies", [OracleScorer(dataset, "Movies")], EvaluateConfig(bootstrap=20)
    )
    doc = report_to_json(report)
    warm = next(r for r in doc["results"] if r["model"] == "oracle" and r["segment"] == "warm")
    assert warm["delta"]["against"] == "target-only" and warm["delta"]["NDCG@10"] is None
    assert "not in this report" in warm["delta"]["note"]
    console = Console(record=True, width=120)
    console.print(render_table(report))
    text = console.export_text()
    assert "no target-only in this report" in " ".join(text.split())
    assert text.split("mean over users")[0].count("▲") == 1  # cold only: oracle vs popularity


class SequenceOnly(OracleScorer):
    """Like a single-domain sequence model: reads the domain's history alone (nothing for a cold user)."""

    name = "target-only"
    history_only = True

    def scores(self, user_ids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        out = self.matrix[user_ids].clone()
        out[(history == 0).all(1)] = 0.0  # no history: one constant ranking
        return out


class Deferring(OracleScorer):
    """Gives users with history target-only's scores (the oracle's), as a strategy that falls back."""

    name = "mapping"
    defers_to = "target-only"


class ClaimsToDefer(ReverseOracle):
    """Says it defers to target-only but scores otherwise: the report must not believe it."""

    name = "liar"
    defers_to = "target-only"


def test_a_model_giving_anothers_scores_says_so_and_one_that_cannot_rank_shows_a_dash(
    dataset: Dataset,
) -> None:
    scorers = [
        SequenceOnly(dataset, "Movies"),
        Deferring(dataset, "Movies"),
        ClaimsToDefer(dataset, "Movies"),
    ]
    report = evaluate_scorers(dataset, "Movies", scorers, EvaluateConfig(ks=(3,), bootstrap=20))
    rows = {(r["model"], r["segment"]): r for r in report_to_json(report)["results"]}
    for segment in ("all", "warm", "target-only"):  # every user there has Movies history
        assert rows[("mapping", segment)]["same_as"] == "target-only"
        assert rows[("liar", segment)]["same_as"] is None  # declared, but its numbers differ
    assert rows[("mapping", "cold")]["same_as"] is None  # cold users get its own scores
    # target-only cannot rank cold users (no Movies history): no numbers, no comparison, not a loss.
    cold = rows[("target-only", "cold")]
    assert cold["scored"] is False and cold["NDCG@3"] is None and cold["ci"] == {}
    assert cold["delta"]["NDCG@3"] is None and "cannot rank" in cold["delta"]["note"]
    assert all(r["scored"] for (m, _), r in rows.items() if m != "target-only")
    console = Console(record=True, width=80)
    console.print(render_table(report, plain=True))
    text = console.export_text()
    table, legend = text.split("mean over users")
    assert table.count("=  target-only") == 3  # mapping in all, warm and one domain
    cold_line = next(line for line in table.splitlines() if "—" in line)
    assert "target-only" in cold_line and "▼" not in cold_line and "▲" not in cold_line
    # One ★ per segment, never on a row that repeats another's numbers; mapping wins cold on its own.
    assert table.count("★") == 4 and table.count("★ mapping") == 1
    assert "one domain" in table and "one domain = no Books history" in " ".join(legend.split())
    assert all(len(line) <= 80 for line in text.splitlines())


def test_the_verdict_names_the_winner_per_segment_or_says_none(dataset: Dataset) -> None:
    scorers = [
        SequenceOnly(dataset, "Movies"),
        Deferring(dataset, "Movies"),
        ClaimsToDefer(dataset, "Movies"),
    ]
    report = evaluate_scorers(dataset, "Movies", scorers, EvaluateConfig(ks=(3,), bootstrap=20))
    by_segment = {v["segment"]: v for v in verdict(report)}
    assert list(by_segment) == report.segments
    # Warm: mapping only repeats target-only and the liar is worse: nothing beats target-only.
    assert (
        by_segment["warm"]["model"] is None
        and by_segment["warm"]["line"] == "warm: no model beats target-only"
    )
    # Cold: mapping's own scores (the oracle) against popularity, on one user: a sure win.
    cold = by_segment["cold"]
    pop = report.rows.filter((pl.col("model") == "popularity") & (pl.col("segment") == "cold"))["NDCG@3"][0]
    assert cold["model"] == "mapping" and cold["against"] == "popularity" and cold["significant"]
    assert cold["delta"] == pytest.approx(1.0 - pop) and cold["ci"] == [pytest.approx(1.0 - pop)] * 2
    gain = f"{1.0 - pop:+.4f}"
    assert cold["line"] == f"cold: mapping {gain} NDCG@3 over popularity [{gain}, {gain}], significant"
    assert by_segment["target-only"]["line"].startswith("one domain: ")
    # The JSON carries the same verdict, and one shape for one domain or several.
    doc = reports_to_json([report])
    assert list(doc) == ["reports"] and doc["reports"][0]["verdict"] == verdict(report)
    assert verdict_lines([report])[2] == cold["line"]
    other = evaluate_scorers(dataset, "Books", [], EvaluateConfig(bootstrap=0))
    assert [r["domain"] for r in reports_to_json([report, other])["reports"]] == ["Movies", "Books"]
    assert all(line.startswith(("Movies ", "Books ")) for line in verdict_lines([report, other]))


def test_a_verdict_without_intervals_says_so(dataset: Dataset) -> None:
    report = evaluate_scorers(dataset, "Movies", [Deferring(dataset, "Movies")], EvaluateConfig(bootstrap=0))
    cold = next(v for v in verdict(report) if v["segment"] == "cold")
    assert not cold["significant"] and cold["line"].endswith("(no interval: --bootstrap 0)")
    # No target-only in the report: the other segments have nothing to compare with, and say it.
    warm = next(v for v in verdict(report) if v["segment"] == "warm")
    assert warm["line"] == "warm: no target-only in this report, nothing to compare with"
