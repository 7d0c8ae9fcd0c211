"""Which model serves each user segment, chosen on the VALIDATION split (never test).

`recommend` serves a user with the model that ranked best for their segment on validation: every model
trained for the target (and popularity) ranks the target's validation cases, and the best mean NDCG@10
per segment among the models that serve it (`store.serves`, from the strategy contract) wins; ties go to the
earlier model in report order, the simpler one. A non-cold segment with fewer than MIN_USERS validation users
is judged by the `all` segment's scores (every non-cold user), since its own mean would be noise. The test
report is never read, so choosing a model does not leak the test split into what is served.

Cold-start users have no validation items (their whole target history is held out for test), so the
`cold` segment is judged on pseudo-cold cases: every validation user who has source history ranks their
validation item from an empty target history, which is what a cold user looks like to a model. (Under a
`timestamp` split, users who are genuinely cold at validation time count as cold too.)

The choice is cached in reports/<dataset>/<target>/selection.json with the fingerprints of the models it
compared, and recomputed when a model is added, removed or retrained. A model that cannot be loaded (one
trained from a model retrained since) is left out of the comparison, and `skipped` says why.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import polars as pl

from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError
from xdrec.evaluation import ALL_SEGMENT, COLD_SEGMENT, per_user_metrics, segment_sort_key
from xdrec.store import POPULARITY, load_scorer, model_fingerprint, serves, trained_models
from xdrec.validation import METRIC, VALIDATION_USERS, validation_sample
from xdrec.workspace import Workspace, read_json, write_json

FILE = "selection.json"
MIN_USERS = 100  # fewer validation users in a segment: chosen by the `all` segment's scores


@dataclass(frozen=True)
class Selection:
    """The model per segment and the validation scores it was chosen by."""

    dataset: str
    models: dict[str, str | None]  # model name -> fingerprint, what was compared
    scores: dict[str, dict[str, float]]  # segment -> model -> mean validation NDCG@10
    users: dict[str, int]  # segment -> validation cases
    best: dict[str, str]  # segment -> the chosen model
    skipped: dict[str, str]  # model -> why it could not be compared

    def model_for(self, segment: str) -> str:
        """The chosen model of `segment`, else of `all` (a segment with no validation users)."""
        return self.best.get(segment) or self.best.get(ALL_SEGMENT) or POPULARITY


def selection_cases(data: Dataset, max_users: int = VALIDATION_USERS, seed: int = 0) -> pl.DataFrame:
    """The target's validation cases (a seeded sample of at most `max_users` users) plus their pseudo-cold
    copies: every user with source history again, with an empty target history and the segment `cold`."""
    cases = validation_sample(data.eval_cases(data.target, "valid"), max_users, seed)
    pseudo_cold = cases.filter(pl.col("segment") == "warm").with_columns(
        history=pl.lit([], dtype=cases.schema["history"]), segment=pl.lit(COLD_SEGMENT)
    )
    return pl.concat([cases, pseudo_cold])


def select_models(workspace: Workspace, data: Dataset, device: str = "auto") -> Selection:
    """The cached choice if its models are still the workspace's, else a new validation ranking (saved)."""
    names = [POPULARITY, *(m for m in trained_models(workspace, data, data.target) if m != POPULARITY)]
    models = {name: model_fingerprint(workspace, name) for name in names}
    path = workspace.reports_dir / data.name / data.target / FILE
    if path.exists():
        cached = Selection(**read_json(path))
        if cached.models == models and cached.dataset == data.name:
            return cached
    cases = selection_cases(data)
    n_items = data.n_items(data.target)
    scores: dict[str, dict[str, float]] = {}
    users: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            scorer = load_scorer(workspace, name, data, device, for_validation=True)
        except XdrecError as e:
            skipped[name] = str(e)
            continue
        per_user = per_user_metrics(scorer, cases, n_items, ks=(10,))
        groups = [(ALL_SEGMENT, per_user.filter(pl.col("segment") != COLD_SEGMENT))]
        groups += [(s, g) for (s,), g in per_user.group_by("segment")]
        for segment, group in groups:
            if group.height:
                scores.setdefault(segment, {})[name] = float(group[METRIC].mean())
                users[segment] = group.height
    order = sorted(scores, key=segment_sort_key)
    best = {}
    for segment in order:
        # Only a model that serves the segment from real evidence may be chosen for it (the strategy
        # contract; `all` is judged as warm); popularity serves every segment.
        serving = [
            m for m in scores[segment] if serves(workspace, m, "warm" if segment == ALL_SEGMENT else segment)
        ]
        # A segment with few validation users (target-only has a handful on the Amazon pairs) is judged
        # by every non-cold user's scores instead: its own mean is noise.
        small = users[segment] < MIN_USERS and segment != COLD_SEGMENT and ALL_SEGMENT in scores
        judged = ALL_SEGMENT if small else segment
        best[segment] = max(serving, key=lambda m: (scores[judged].get(m, 0.0), -names.index(m)))
    selection = Selection(
        dataset=data.name,
        models=models,
        scores={s: scores[s] for s in order},
        users={s: users[s] for s in order},
        best=best,
        skipped=skipped,
    )
    # Only a cache: recommend is a reader (it takes no lock), and an evaluate may be sweeping reports/.
    with contextlib.suppress(OSError):
        write_json(path, asdict(selection))
    return selection
