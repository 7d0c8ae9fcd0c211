"""The stages that combine the others: evaluate every model, recommend for one user, run it all, demo.

`run` reuses a stage whose inputs and parameters have not changed since the last run in the workspace:
raw files that exist, a dataset whose manifest has the same parameters and input hashes, models trained on
the same dataset with the same configuration, embeddings of the same dataset.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from xdrec import distributed
from xdrec.data.dataset import Dataset
from xdrec.data.overlap import overlap_report
from xdrec.data.prepare import PREPARE_FIELDS, PrepareConfig, dataset_name, prepare
from xdrec.devices import resolve_device
from xdrec.embedding import embeddings_match
from xdrec.errors import OptionError, XdrecError
from xdrec.evaluation import EvaluateConfig, Report, evaluate_scorers
from xdrec.model_options import ModelOptions
from xdrec.models import default_config
from xdrec.progress import Update, counting
from xdrec.report import keeps_intervals, report_paths, save_report
from xdrec.scoring import Scorer, pad_left
from xdrec.serving import select_models
from xdrec.store import (
    POPULARITY,
    Absent,
    is_current,
    load_scorer,
    model_domains,
    model_fingerprint,
    rebuild_command,
    strict_error,
    trained_models,
    untrained,
)
from xdrec.strategies import STRATEGIES, TransferConfig, model_name, parse_strategies
from xdrec.strategies.fallback import FALLS_BACK
from xdrec.training import TrainConfig
from xdrec.tuned_settings import Tuned, apply_tuned, with_params
from xdrec.workspace import Workspace, file_sha256, read_json

if TYPE_CHECKING:
    from xdrec.data.synthetic import SyntheticConfig

Log = Callable[[str], None]


def evaluate(
    workspace: Workspace,
    config: EvaluateConfig = EvaluateConfig(),
    *,
    dataset: str | None = None,
    models: Sequence[str] = (),
    domain: str | None = None,
    strict: bool = False,
    progress: bool = True,
) -> tuple[Report, dict[str, Path]]:
    """Evaluate `models` (default: every model trained for the domain) beside popularity on the test split.

    By default the models the pipeline trains but the workspace lacks, or holds stale, are left out and
    named in `report.absent`; `strict` makes that an error. Models named in `models` must all load.
    Writes reports/<dataset>/<domain>/report.json + .png (sampled: report-sampled-N.*) and returns them;
    writes nothing and returns {"kept": the saved JSON} when that would replace a report with confidence
    intervals by one without (`bootstrap` 0). progress: a bar per model on stderr.

    Under torchrun (`xdrec.distributed`) every rank ranks its share of the test users on its own device
    and gets the whole report; rank 0 alone writes it.
    """
    ranks = distributed.launched()
    if ranks.distributed:  # join the process group; each rank scores on its device (its GPU on CUDA)
        _, device = distributed.setup(resolve_device(config.device))
        config = replace(config, device=str(device))
    data = Dataset.from_workspace(workspace, dataset)
    domain = domain or data.target
    data.check_domain(domain)
    names = [m for m in (models or trained_models(workspace, data, domain)) if m != POPULARITY]
    wrong = [name for name in names if not _scores(workspace, name, domain)]
    if wrong:  # checked before loading anything; an unknown name fails in load_scorer with its own message
        raise XdrecError(f"model {wrong[0]} scores another domain than {domain}: pass --domain to match it")
    scorers, absent = [], []
    for name in names:
        try:
            scorers.append(load_scorer(workspace, name, data, config.device, domain))
        except XdrecError as e:
            if models:  # asked for by name: its problem is the answer
                raise
            absent.append(Absent(name, f"stale: {e}", rebuild_command(data, name)))
    if not models:
        absent += untrained(workspace, data, domain, names)
    if strict and absent:
        raise strict_error(absent)
    report = evaluate_scorers(data, domain, scorers, config, progress=progress)
    report = replace(report, absent=tuple(a.as_dict() for a in absent))
    directory = report_dir(workspace, data, domain)
    kept = keeps_intervals(report, directory)
    if kept is not None:  # a quick look never replaces a report with CIs
        return report, {"kept": kept}
    return report, save_report(report, directory) if ranks.main else report_paths(report, directory)


def evaluate_domains(
    workspace: Workspace,
    config: EvaluateConfig = EvaluateConfig(),
    *,
    dataset: str | None = None,
    models: Sequence[str] = (),
    domain: str | None = None,
    both_domains: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> list[tuple[Report, dict[str, Path]]]:
    """`evaluate` on each of `evaluation_domains(...)`, every model in the domain it scores. Returns
    (report, paths) per domain, in the dataset's domain order."""
    data = Dataset.from_workspace(workspace, dataset)
    domains = evaluation_domains(data, domain, both_domains)
    wrong = [m for m in models if not any(_scores(workspace, m, d) for d in domains)]
    if wrong:  # checked before loading anything; an unknown name fails in load_scorer with its own message
        raise XdrecError(
            f"model {wrong[0]} scores another domain than {' or '.join(domains)}: pass --domain to match it"
        )
    out = []
    for where in domains:
        # Given models: those of this domain (popularity alone where there is none); else every trained one.
        names = [m for m in models if _scores(workspace, m, where)] or [POPULARITY]
        out.append(
            evaluate(
                workspace,
                config,
                dataset=data.name,
                models=names if models else (),
                domain=where,
                strict=strict,
                progress=progress,
            )
        )
    return out


def _scores(workspace: Workspace, name: str, domain: str) -> bool:
    """Whether model `name` scores `domain`'s items (popularity and unknown names: yes; loading says more)."""
    domains = model_domains(workspace, name)
    return domains is None or domain in domains


def evaluation_domains(data: Dataset, domain: str | None = None, both: bool = False) -> tuple[str, ...]:
    """The domains `evaluate` ranks: `domain`; else both when asked or under the mixed split (each user
    is tested in the domain of their last interaction, so each domain holds part of the test); else the
    target."""
    if domain is not None:
        data.check_domain(domain)
        return (domain,)
    if both or data.split == "mixed":
        return data.domains
    return (data.target,)


def report_dir(workspace: Workspace, data: Dataset, domain: str) -> Path:
    return workspace.reports_dir / data.name / domain


@dataclass(frozen=True)
class Recommendation:
    user: str
    segment: str
    model: str
    items: list[dict]  # {"rank", "item", "score"}
    absent: tuple[dict[str, str], ...] = ()  # models that would serve the segment but are missing or stale
    score: str = "score"  # what the score is (`score_name`): its scale differs from model to model
    held_out: bool = False  # a cold-start user of the evaluation, served here with the history it holds


def score_name(model: str) -> str:
    """What a model's recommendation score is, in words: the scales differ (counts, logits, log-probs)."""
    if model == POPULARITY:
        return "training interactions"
    return "log-probability" if model.split("-")[0] == "bag" else "logit"


def recommend(
    workspace: Workspace,
    user: str,
    *,
    k: int = 10,
    strategy: str | None = None,
    dataset: str | None = None,
    device: str = "auto",
    strict: bool = False,
) -> Recommendation:
    """Top-k target items for a raw user id, ranked from their whole history, never an item they have.

    The history is every target interaction the dataset holds for the user, test split included: the
    splits exist to evaluate, a user being served has all of it. Their segment follows from it (warm:
    target and source history, cold: source only, target-only: no source). The model is `strategy` if
    given, else the one that ranked the segment's users best on the validation split
    (`xdrec.serving`; never the test report).
    """
    data = Dataset.from_workspace(workspace, dataset)
    frame = recommend_many(
        workspace, [user], k=k, strategy=strategy, dataset=data.name, device=device, progress=False
    )
    first = frame.row(0, named=True) if frame.height else None
    segment = first["segment"] if first else user_segments(data, pl.DataFrame({"user": [user]}))["segment"][0]
    name = first["model"] if first else (strategy or POPULARITY)
    absent = [] if strategy else _absent_for(workspace, data, segment)
    if strict and absent:
        raise strict_error(absent)
    items = [{"rank": r["rank"], "item": r["item"], "score": r["score"]} for r in frame.iter_rows(named=True)]
    held_out = bool(data.users.filter(pl.col("user") == user)["cold"].any())
    return Recommendation(
        user, segment, name, items, tuple(a.as_dict() for a in absent), score_name(name), held_out
    )


# `recommend_many`'s columns (and the Parquet file of `xdrec recommend --out`).
RECOMMENDATIONS = {
    "user": pl.String,
    "segment": pl.String,
    "model": pl.String,
    "rank": pl.Int64,
    "item": pl.String,
    "score": pl.Float64,
}


def recommend_many(
    workspace: Workspace,
    users: Sequence[str] | None = None,
    *,
    k: int = 10,
    strategy: str | None = None,
    dataset: str | None = None,
    device: str = "auto",
    batch_size: int = 512,
    progress: bool = True,
) -> pl.DataFrame:
    """`recommend` for many raw user ids at once (None: every user of the dataset), in batches per model
    (progress: a bar per model on stderr).

    returns: user, segment, model, rank, item, score (one row per recommended item; users in the given
             order, ranks 1..k), for a batch export (`xdrec recommend --all --out recs.parquet`).
    """
    if k < 1:
        raise OptionError("--k must be at least 1")
    data = Dataset.from_workspace(workspace, dataset)
    known = data.users.select("user_id", "user")
    if users is None:
        wanted = known
    else:
        wanted = pl.DataFrame({"user": list(users)}, schema={"user": pl.String}).unique(maintain_order=True)
        wanted = wanted.join(known, on="user", how="left", maintain_order="left")
        unknown = wanted.filter(pl.col("user_id").is_null())["user"].to_list()
        if unknown:
            data.user_id(unknown[0])  # its own one-line error (names the user and the dataset)
    wanted = user_segments(data, wanted)
    names = {
        s: strategy or select_models(workspace, data, device).model_for(s) for s in set(wanted["segment"])
    }
    for name in set(names.values()):
        _check_recommender(workspace, data, name)
    raw_items = data.item_raw_ids(data.target)
    parts = []
    for name in sorted(set(names.values())):
        group = wanted.filter(pl.col("segment").replace_strict(names) == name)
        scorer = load_scorer(workspace, name, data, device, data.target)
        with counting(f"recommend with {name}", "users", enabled=progress) as update:
            parts += _top_items(scorer, name, group, raw_items, k, batch_size, update)
    out = pl.concat(parts) if parts else pl.DataFrame(schema=RECOMMENDATIONS)
    order = wanted.select("user").with_row_index("_order")
    return out.join(order, on="user", maintain_order="left").sort("_order", "rank").drop("_order")


def _top_items(
    scorer: Scorer,
    name: str,
    group: pl.DataFrame,
    raw_items: np.ndarray,
    k: int,
    batch_size: int,
    update: Update,
) -> list[pl.DataFrame]:
    """The top `k` unseen items of each of `group`'s users (user, segment, history) by `scorer`."""
    parts = []
    for start in range(0, group.height, batch_size):
        update(start, group.height)
        chunk = group.slice(start, batch_size)
        history = pad_left(chunk["history"])
        with torch.no_grad():
            scores = scorer.scores(torch.tensor(chunk["user_id"].to_list()), history).float().cpu()
        scores.scatter_(1, history, float("-inf"))  # padding (0) and every item the user has
        top = torch.topk(scores, min(k, scores.shape[1] - 1))
        finite = torch.isfinite(top.values)
        rows = finite.sum(1).tolist()
        parts.append(
            pl.DataFrame(
                {
                    "user": np.repeat(chunk["user"].to_numpy(), rows),
                    "segment": np.repeat(chunk["segment"].to_numpy(), rows),
                    "model": name,
                    "rank": np.concatenate([np.arange(1, n + 1) for n in rows]) if rows else [],
                    "item": raw_items[top.indices[finite].numpy()],
                    "score": top.values[finite].numpy().astype(np.float64),
                },
                schema=RECOMMENDATIONS,
            )
        )
    update(group.height, group.height)
    return parts


def user_segments(data: Dataset, users: pl.DataFrame) -> pl.DataFrame:
    """`users` (user[, user_id]) with user_id, history (every target item, in time order) and segment
    (warm: target and source history, cold: source only, target-only: no source)."""
    if "user_id" not in users.columns:
        users = users.with_columns(user_id=pl.lit(data.user_id(users["user"][0]), dtype=pl.Int32))
    rows = data.interactions().join(users.lazy().select("user_id"), on="user_id", how="semi")
    target = (
        rows.filter(pl.col("domain") == data.target)
        .sort("timestamp", maintain_order=True)
        .group_by("user_id", maintain_order=True)
        .agg(history=pl.col("item_id"))
    )
    source = rows.filter(pl.col("domain") == data.source).select("user_id").unique()
    out = (
        users.lazy()
        .join(target, on="user_id", how="left", maintain_order="left")
        .join(source.with_columns(has_source=pl.lit(True)), on="user_id", how="left", maintain_order="left")
        .collect()
    )
    return out.with_columns(
        history=pl.col("history").fill_null(pl.lit([], dtype=pl.List(pl.Int32))),
        segment=pl.when(pl.col("has_source").is_null())
        .then(pl.lit(f"{data.role(data.target)}-only"))
        .when(pl.col("history").list.len() > 0)
        .then(pl.lit("warm"))
        .otherwise(pl.lit("cold")),
    ).drop("has_source")


def _check_recommender(workspace: Workspace, data: Dataset, name: str) -> None:
    """A usage error naming the models that can recommend when `name` is none of them."""
    domains = model_domains(workspace, name)
    if name == POPULARITY or (domains is not None and data.target in domains):
        return
    valid = [POPULARITY, *trained_models(workspace, data, data.target)]
    what = "no such model" if domains is None else f"it scores {' and '.join(domains)} items"
    raise OptionError(
        f"cannot recommend {data.target} items with {name!r} ({what}): choose from {', '.join(valid)}"
    )


def _absent_for(workspace: Workspace, data: Dataset, segment: str) -> list[Absent]:
    """The expected models that would serve `segment` but are not trained (or not on this dataset)."""
    present = trained_models(workspace, data, data.target)
    return [
        a
        for a in untrained(workspace, data, data.target, present)
        if a.model not in STRATEGIES or segment in STRATEGIES[a.model].serves
        if a.model != "target-only" or segment != "cold"
    ]


# ------------------------------------------------------------------------------------------------ run


@dataclass(frozen=True)
class RunConfig:
    """Every stage's configuration: what `xdrec run` exposes, one object per stage."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # every model's training (device included)
    model: ModelOptions = field(default_factory=ModelOptions)  # architecture over the backbone's defaults
    # Strategy names, `default` or `all`, resolved for the dataset's split (`strategies.parse_strategies`)
    strategies: tuple[str, ...] = ("default",)
    # The strategies' own options (each strategy's `Options`; `strategies.strategy_options`): defaults
    # for a strategy not in it.
    strategy_options: tuple[Any, ...] = ()
    # Seeded like prepare's default. `negatives` adds the sampled protocol beside the full-ranking headline.
    reverse: bool = False  # also every strategy into the source domain (models/<strategy>-reverse/)
    evaluate: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(seed=42))
    # Train each model with the settings `xdrec tune` stored for it, except the fields in `keep` (the
    # options a user set explicitly). An existing dataset is reused with the options it was prepared
    # with; only the `prepare` fields in `keep` prepare it again.
    tuned: bool = False
    keep: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.prepare.check()  # checked before any stage runs, not after an hour of training
        resolve_device(self.train.device)
        resolve_device(self.evaluate.device)

    @property
    def transfer(self) -> TransferConfig:
        return TransferConfig(train=self.train, model=self.model, strategy_options=self.strategy_options)


def run(
    workspace: Workspace,
    source: str,
    target: str,
    config: RunConfig = RunConfig(),
    *,
    fetch_source: str | None = None,
    progress: bool = True,
    log: Log = print,
) -> list[tuple[Report, dict[str, Path]]]:
    """fetch -> prepare -> overlap -> pretrain (source, target-only) -> embed -> transfer -> evaluate.

    Returns (report, its paths) for the full-ranking report of each evaluated domain
    (`evaluation_domains`: the target, or both under the mixed split), then the sampled ones when
    `config.negatives` is set.
    """
    from xdrec.data.amazon import fetch
    from xdrec.embedding import embed
    from xdrec.pretraining import pretrain
    from xdrec.strategies import transfer

    missing = [d for d in (source, target) if not workspace.raw(d).exists()]
    if missing:
        log(f"fetch: {', '.join(missing)}")
        fetch(workspace, missing, fetch_source, progress=progress)
    else:
        log("fetch: raw files present, reused")

    name = dataset_name(source, target)
    options, changed = _prepare_options(workspace, name, config)
    if _dataset_is_current(workspace, name, source, target, options):
        log(f"prepare: {name} unchanged, reused")
        workspace.set_current_dataset(name)
    else:
        log(f"prepare: {name}" + (f" again, now with {changed}" if changed else ""))
        for note in prepare(workspace, source, target, options).notes:
            log(f"prepare: {note}")
    data = Dataset.load(workspace.dataset_dir(name))
    shared = overlap_report(data)
    log(
        f"overlap: {shared['overlap_users']:,} users in both domains "
        f"({shared['overlap_share'][target]:.0%} of {target}'s), "
        f"{shared['cold_users']:,} held out as cold-start"
    )

    # A stage re-runs when its own inputs or parameters changed, or when a model it was built from was
    # retrained since (the fingerprints of xdrec.checkpoint's lineage).
    architecture = config.model.apply(default_config())
    for domain in (source, target):
        model = f"{data.role(domain)}-only"
        (own_architecture, train), tuned = _settings(
            workspace, data, model, (architecture, config.train), config
        )
        expected = {k: v for k, v in asdict(own_architecture).items() if k != "n_items"}  # type: ignore[call-overload]
        if is_current(workspace, model, data, train, expected):
            log(f"pretrain: {model} unchanged, reused")
        else:
            log(f"pretrain: {model} on {domain}" + _tuned_note(tuned))
            pretrain(
                workspace, dataset=name, domain=domain, model=architecture, train_config=config.train,
                resume=None, progress=progress,  # a killed run continues where it stopped
                tuned=config.tuned, keep=config.keep,
            )  # fmt: skip

    if embeddings_match(
        workspace.embeddings("source-only"), data, model_fingerprint(workspace, "source-only")
    ):
        log("embed: unchanged, reused")
    else:
        log("embed: source-only user vectors")
        embed(workspace, dataset=name, device=config.train.device, progress=progress)

    transfer_config = config.transfer
    # Into the target; with `reverse` also into the source, from target-only and its vectors.
    directions = (target, source) if config.reverse else (target,)
    if config.reverse:
        if embeddings_match(
            workspace.embeddings("target-only"), data, model_fingerprint(workspace, "target-only")
        ):
            log("embed: target-only unchanged, reused")
        else:
            log("embed: target-only user vectors (for the reverse direction)")
            embed(workspace, dataset=name, model="target-only", device=config.train.device, progress=progress)
    strategies = parse_strategies(config.strategies, data.split)  # the defaults: `joint` on a mixed split
    strategy_models = []
    for into in directions:
        for strategy in strategies:
            if STRATEGIES[strategy].both_domains and into != target:
                continue  # its one model already scores the source domain
            model = model_name(strategy, data, into)
            strategy_models.append(model)
            (effective,), tuned = _settings(
                workspace, data, model, (transfer_config,), config, apply=STRATEGIES[strategy].with_params
            )
            own = STRATEGIES[strategy].record(effective)
            train = STRATEGIES[strategy].train_config(effective)
            if is_current(
                workspace, model, data, train, effective.model.given(), STRATEGIES[strategy], **own
            ):
                log(f"transfer: {model} unchanged, reused")
            else:
                log(f"transfer: {model}" + _tuned_note(tuned))
                (result,) = transfer(
                    workspace,
                    [strategy],
                    dataset=name,
                    config=transfer_config,
                    target=into,
                    resume=None,  # a killed run continues where it stopped
                    progress=progress,
                    tuned=config.tuned,
                    keep=config.keep,
                )
                if result.falls_back:
                    log(f"transfer: {model} {FALLS_BACK}")
                for note in result.notes():
                    log(f"transfer: {model}: {note}")

    domains = evaluation_domains(data, both=config.reverse)
    models = [f"{data.role(domain)}-only" for domain in domains] + strategy_models
    results = []
    sampled = config.evaluate.negatives
    for negatives in (None, sampled) if sampled else (None,):
        protocol = "full ranking" if negatives is None else f"sampled, {negatives} negatives"
        log(f"evaluate: {protocol} on {' and '.join(domains)}")
        evaluation = replace(config.evaluate, negatives=negatives, device=config.train.device)
        results += evaluate_domains(workspace, evaluation, dataset=name, models=models, progress=progress)
    return results


def _settings(
    workspace: Workspace,
    data: Dataset,
    model: str,
    configs: tuple,
    config: RunConfig,
    apply: Callable[..., Any] = with_params,
) -> tuple[tuple, Tuned | None]:
    """The configs `model` is trained with: the stored tuned settings applied when the run uses them."""
    if not config.tuned:
        return configs, None
    return apply_tuned(workspace, data, model, configs, config.keep, apply)


def _tuned_note(tuned: Tuned | None) -> str:
    return "" if tuned is None else f" (tuned settings: trial {tuned.trial}, validation {tuned.value:.4f})"


def _prepare_options(workspace: Workspace, name: str, config: RunConfig) -> tuple[PrepareConfig, str]:
    """The options to prepare `name` with: those it was prepared with, except the ones the user gave
    (`config.keep`), so a plain `run` never re-prepares a dataset made with other options; and the
    given options that differ from the dataset's, worded (empty when none)."""
    path = workspace.dataset_dir(name) / "manifest.json"
    if not path.exists():
        return config.prepare, ""
    stored = read_json(path).get("parameters")
    try:
        before = PrepareConfig(**stored)
    except TypeError:  # a manifest from another version of xdrec: the options as given
        return config.prepare, ""
    given = {f: getattr(config.prepare, f) for f in PREPARE_FIELDS if f in config.keep}
    options = replace(before, **given)
    changed = ", ".join(
        f"--{f.replace('_', '-')} {given[f]} (was {getattr(before, f)})"
        for f in given
        if given[f] != getattr(before, f)
    )
    return options, changed


def _dataset_is_current(
    workspace: Workspace, name: str, source: str, target: str, config: PrepareConfig
) -> bool:
    path = workspace.dataset_dir(name) / "manifest.json"
    if not path.exists():
        return False
    manifest = read_json(path)
    if manifest.get("parameters") != config.parameters():
        return False
    inputs = manifest.get("inputs", {})
    return all(inputs.get(d, {}).get("sha256") == file_sha256(workspace.raw(d)) for d in (source, target))


# ------------------------------------------------------------------------------------------------ demo

# Short training for the demo: a higher learning rate and an early stop after two flat epochs.
DEMO_TRAIN = TrainConfig(epochs=10, patience=2, batch_size=128, lr=3e-3, seed=42)


def demo(
    workspace: Workspace | None = None,
    *,
    synthetic: SyntheticConfig | None = None,
    train: TrainConfig = DEMO_TRAIN,
    progress: bool = True,
    log: Log = print,
) -> tuple[Workspace, list[tuple[Report, dict[str, Path]]]]:
    """The whole pipeline on the embedded synthetic default, in `workspace` or a new temporary one:
    the workspace and `run`'s (report, paths)."""
    from xdrec.data.synthetic import DESCRIPTION, SyntheticConfig, write_raw

    config = RunConfig(train=train, evaluate=EvaluateConfig(seed=42, bootstrap=200))  # checked first
    workspace = workspace or Workspace(Path(tempfile.mkdtemp(prefix="xdrec-demo-")))
    synthetic = synthetic or SyntheticConfig()
    log(f"demo workspace: {workspace.root}")
    log(DESCRIPTION)
    paths = write_raw(workspace.raw_dir, synthetic)
    source, target = list(paths)
    return workspace, run(workspace, source, target, config, progress=progress, log=log)
