"""Synthetic two-domain review logs: the embedded default data that `xdrec demo` runs on.

Nothing here is real: users, items, ratings and timestamps are drawn from a seeded generative model, so
the package can demonstrate the whole pipeline offline and tests can plant structure they know is there.
The ids only look like Amazon's (`SYNU000123`, `SYNB00042`, `SYNM00042`) and say so with their prefix.

The generative model, per user and domain (source `Synthetic_Books`, target `Synthetic_Movies`):

- taste: every user has one latent vector `u` shared by both domains; a domain sees it through its own
  linear map, `taste_D = normalize(A_D u)`, blended with a little domain-specific noise. Source behaviour
  therefore predicts target behaviour (what transfer learning needs) without being a copy of it.
- items: each domain has `n_topics` topics (genres) with latent centroids; an item belongs to one topic,
  has a feature vector near its centroid and a Zipf popularity weight, so a few items are very popular.
- sequences: at each step the user keeps the previous item's topic with probability `topic_stickiness`
  (a short-term interest), otherwise draws a topic from softmax(sharpness * taste . centroid + log topic
  popularity); the item is drawn from the topic by popularity. With probability `series_continuation`
  the user instead takes the next item of the previous item's series (volume 2 after volume 1). Order
  therefore matters: the last item predicts the next one better than the bag of all items does.
- activity: sequence lengths are lognormal (heavy-tailed), correlated across a user's two domains; users
  are in both domains, source-only or target-only in configured proportions. A user never repeats an item.
- time: each user is active in one window that starts inside [start_ms, end_ms) (2014 through 2022 by
  default, more users arriving in later years) and may run past end_ms, where the data stops; both
  domains' timestamps increase within the observed window. The Amazon 2023 benchmark cut points
  (2021-08-11, 2022-07-28) split the default data about 78% train, 15% valid, 7% test.
- ratings: 1-5, higher for items closer to the user's taste, a few null (implicit feedback).

Default size: 3,000 users, about 97k rows; after a 5-core filter ~2,800 users, ~900 / ~700 items and
~20 / ~17 interactions per user in source / target. Generation is vectorised over users (a loop over the
time steps of a batch of users, never one per interaction): `SyntheticConfig(n_users=300_000)` gives
~9.8M rows in ~15 s of one core, its working memory beyond the output bounded by the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from xdrec.data.schema import RAW_SCHEMA
from xdrec.errors import XdrecError
from xdrec.workspace import atomic_path

DESCRIPTION = (
    "Synthetic data, not real reviews: two seeded, generated domains (Synthetic_Books as source, "
    "Synthetic_Movies as target) whose users share a latent taste across domains and follow sequential "
    "habits, so cross-domain transfer and sequence models have real structure to find."
)


def _ms(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=timezone.utc).timestamp() * 1000)


# Correlation of a user's log activity in the two domains: heavy readers tend to be heavy viewers too.
_ACTIVITY_CORRELATION = 0.5
# Tries to replace an item the user already has before giving up on that step (the sequence is one shorter).
_REDRAW_TRIES = 4
# Users per batch of the step loop: bounds the (users x items) "already seen" matrix to ~16 MB.
_SEEN_MATRIX_CELLS = 1 << 24
# Above this many items that matrix would leave batches of under 64 users (hours at Books scale): repeats
# are then found by comparing with the batch's own sequences so far, in batches of this many users.
_SEEN_MATRIX_MAX_ITEMS = _SEEN_MATRIX_CELLS // 64
_COMPARE_BATCH = 16_384


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything the generator draws from; the same config (seed included) gives identical frames."""

    n_users: int = 3_000
    source_items: int = 1_000
    target_items: int = 800
    latent_dim: int = 6
    n_topics: int = 24
    # Users active in both domains, and in the source only; the rest are target-only.
    both_fraction: float = 0.8
    source_only_fraction: float = 0.1
    # Mean interactions per user in a domain before any filtering (lognormal, capped at max_length).
    source_mean_length: float = 28.0
    target_mean_length: float = 22.0
    length_sigma: float = 0.8
    max_length: int = 200
    item_zipf_exponent: float = 1.2
    # How peaked a user's topic choice is around their taste (logit scale of taste . centroid).
    taste_sharpness: float = 12.0
    # Weight of a user's own per-domain noise against the shared latent in their domain taste
    # (0: the target taste is a function of the source taste; 1: the domains are unrelated).
    domain_specific_taste: float = 0.2
    topic_stickiness: float = 0.5
    series_continuation: float = 0.3
    mean_series_length: float = 4.0
    null_rating_fraction: float = 0.05
    start_ms: int = _ms(2014, 1, 1)
    end_ms: int = _ms(2023, 1, 1)
    seed: int = 42
    source_domain: str = "Synthetic_Books"
    target_domain: str = "Synthetic_Movies"
    user_prefix: str = "SYNU"
    source_item_prefix: str = "SYNB"
    target_item_prefix: str = "SYNM"

    def __post_init__(self) -> None:
        problems = []
        if self.n_users < 1:
            problems.append("n_users must be at least 1")
        if min(self.source_items, self.target_items) < self.n_topics or self.n_topics < 1:
            problems.append("each domain needs at least n_topics items, and n_topics >= 1")
        if self.latent_dim < 1:
            problems.append("latent_dim must be at least 1")
        fractions = (
            self.both_fraction,
            self.source_only_fraction,
            1.0 - self.both_fraction - self.source_only_fraction,
        )
        if min(fractions) < -1e-9:
            problems.append("both_fraction and source_only_fraction must be >= 0 and sum to at most 1")
        if min(self.source_mean_length, self.target_mean_length) < 1 or self.max_length < 1:
            problems.append("mean lengths and max_length must be at least 1")
        probabilities = (self.topic_stickiness, self.series_continuation, self.null_rating_fraction)
        if not all(0 <= p <= 1 for p in (*probabilities, self.domain_specific_taste)):
            problems.append("probabilities and domain_specific_taste must lie in [0, 1]")
        if self.mean_series_length < 1:
            problems.append("mean_series_length must be at least 1")
        if self.end_ms - self.start_ms < 60 * 86_400_000:
            problems.append("end_ms must be at least 60 days after start_ms")
        if self.source_domain == self.target_domain:
            problems.append("source_domain and target_domain must differ")
        # Domain names become file names (raw/<Domain>.parquet).
        if any(Path(name).name != name or name in ("", ".", "..") for name in self.domains):
            problems.append("domain names must be plain file names (no directories)")
        if problems:
            raise XdrecError(f"invalid synthetic config: {'; '.join(problems)}")

    @property
    def target_only_fraction(self) -> float:
        return max(0.0, 1.0 - self.both_fraction - self.source_only_fraction)

    @property
    def domains(self) -> tuple[str, str]:
        return (self.source_domain, self.target_domain)


@dataclass(frozen=True)
class _Domain:
    """One domain's items. Arrays are indexed by item index 0..n-1 unless named `by_rank`."""

    name: str
    item_prefix: str
    taste_map: np.ndarray  # (d, d): how this domain sees the shared user latent
    centroids: np.ndarray  # (K, d) unit topic vectors
    topic_log_mass: np.ndarray  # (K,) log of the summed popularity of the topic's items
    # Items sorted by (topic, popularity desc): within-topic sampling is a searchsorted on cumulative weight.
    item_by_rank: np.ndarray  # (n,) item index at each sorted position
    cum_weight: np.ndarray  # (n,) cumulative popularity in that order
    topic_start: np.ndarray  # (K + 1,) first sorted position of each topic
    item_topic: np.ndarray  # (n,)
    successor: np.ndarray  # (n,) next item of the same series, -1 at a series' end
    item_vectors: np.ndarray  # (n, d) unit features, for ratings
    public_number: np.ndarray  # (n,) the number in the item's raw id, a permutation of 1..n

    @property
    def n_items(self) -> int:
        return len(self.item_topic)


def books_scale(n_users: int = 1_410_000, source_items: int = 600_000, seed: int = 42) -> SyntheticConfig:
    """Amazon Books at its 5-core size as the source domain (Amazon Reviews 2023: about 776K users, 495K
    items, 9.5M interactions), with a small target so that `prepare` has two domains.

    The defaults generate ~11M source rows; about 55% of the users have 5 or more (12.5 on average, median
    9, heavy-tailed), and a flat item popularity (Zipf 0.5) leaves most of the catalogue with 5 or more
    interactions, so the 5-core lands near Books' counts (BENCHMARKS.md gives the measured ones). Scale
    `n_users` and `source_items` together for a smaller copy with the same shape.
    """
    return SyntheticConfig(
        n_users=n_users,
        source_items=source_items,
        target_items=max(24, source_items // 100),
        source_mean_length=9.0,
        target_mean_length=3.0,
        length_sigma=0.9,
        item_zipf_exponent=0.5,
        both_fraction=0.3,
        source_only_fraction=0.7,
        seed=seed,
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _make_domain(
    rng: np.random.Generator, config: SyntheticConfig, name: str, prefix: str, n: int
) -> _Domain:
    d, k = config.latent_dim, config.n_topics
    centroids = _unit(rng.standard_normal((k, d)))
    # Uneven topic sizes (some genres are big); the first k items make sure no topic is empty.
    topic_share = rng.dirichlet(np.full(k, 2.0))
    item_topic = np.concatenate([rng.permutation(k), rng.choice(k, size=n - k, p=topic_share)])
    weight = (rng.permutation(n) + 1.0) ** -config.item_zipf_exponent
    by_rank = np.lexsort((-weight, item_topic))
    sorted_topic = item_topic[by_rank]
    topic_start = np.searchsorted(sorted_topic, np.arange(k + 1))
    topic_mass = np.bincount(item_topic, weights=weight, minlength=k)
    # Series are runs of consecutive items in popularity order within a topic: volume 1 is the most
    # popular, its sequels slightly less so. A run breaks at random and always at a topic boundary.
    breaks = rng.random(n) < 1.0 / config.mean_series_length
    breaks[topic_start[:-1]] = True
    successor = np.full(n, -1, dtype=np.int64)
    continues = ~breaks[1:]
    successor[by_rank[:-1][continues]] = by_rank[1:][continues]
    item_vectors = _unit(centroids[item_topic] + 0.6 * rng.standard_normal((n, d)) / np.sqrt(d))
    return _Domain(
        name=name,
        item_prefix=prefix,
        taste_map=rng.standard_normal((d, d)) / np.sqrt(d),
        centroids=centroids,
        topic_log_mass=np.log(topic_mass),
        item_by_rank=by_rank,
        cum_weight=np.cumsum(weight[by_rank]),
        topic_start=topic_start,
        item_topic=item_topic,
        successor=successor,
        item_vectors=item_vectors,
        public_number=rng.permutation(n) + 1,
    )


def _sample_in_topic(domain: _Domain, topic: np.ndarray, u: np.ndarray) -> np.ndarray:
    """An item of each `topic`, drawn by popularity: inverse CDF on the topic's slice of cum_weight."""
    lo, hi = domain.topic_start[topic], domain.topic_start[topic + 1]
    base = np.where(lo > 0, domain.cum_weight[lo - 1], 0.0)
    x = base + u * (domain.cum_weight[hi - 1] - base)
    pos = np.clip(np.searchsorted(domain.cum_weight, x, side="right"), lo, hi - 1)
    return domain.item_by_rank[pos]


def _draw_topic(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One topic per row of a (B, K) cumulative distribution."""
    return np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)


def _already(
    seen: np.ndarray | None, items: np.ndarray, rows: np.ndarray, item: np.ndarray, step: int
) -> np.ndarray:
    """Whether each row's user already has `item`: from the seen matrix, or without one (large catalogues)
    from the user's sequence so far (-1 where a step failed, never an item)."""
    if seen is not None:
        return seen[rows, item]
    return (items[rows, :step] == item[:, None]).any(axis=1)


def _sequences(
    rng: np.random.Generator, config: SyntheticConfig, domain: _Domain, taste: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Item sequences of the users with lengths > 0: flat (user, item) arrays, user-major, in time order."""
    logits = config.taste_sharpness * taste @ domain.centroids.T + domain.topic_log_mass  # (U, K)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(prob / prob.sum(axis=1, keepdims=True), axis=1)
    # Longest users first: in a batch the active users at step t are then a prefix, and the step loop of
    # a batch of short users stops early.
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    by_matrix = domain.n_items <= _SEEN_MATRIX_MAX_ITEMS
    batch = max(64, _SEEN_MATRIX_CELLS // domain.n_items) if by_matrix else _COMPARE_BATCH
    users_out, items_out = [], []
    for first in range(0, len(order), batch):
        users = order[first : first + batch]
        n_steps = lengths[users]  # descending
        b = len(users)
        items = np.full((b, int(n_steps[0])), -1, dtype=np.int64)
        seen = np.zeros((b, domain.n_items), dtype=bool) if by_matrix else None
        prev_item = np.full(b, -1, dtype=np.int64)
        prev_topic = np.zeros(b, dtype=np.int64)
        user_cdf = cdf[users]
        for step in range(int(n_steps[0])):
            m = int(np.searchsorted(-n_steps, -step, side="left"))  # users with more than `step` items
            rows = np.arange(m)
            u_topic, u_item, u_stick, u_follow = rng.random((4, m))
            topic = _draw_topic(user_cdf[:m], u_topic)
            # Short-term interest: keep the previous item's topic (no-op on the first step: prev_item < 0).
            prev = prev_item[:m]
            topic = np.where((prev >= 0) & (u_stick < config.topic_stickiness), prev_topic[:m], topic)
            item = _sample_in_topic(domain, topic, u_item)
            succ = np.where(prev >= 0, domain.successor[prev], -1)
            follow = (succ >= 0) & (u_follow < config.series_continuation)
            follow &= ~_already(seen, items, rows, np.maximum(succ, 0), step)
            item = np.where(follow, succ, item)
            # Users do not review an item twice: redraw clashes from their long-term taste.
            clash = _already(seen, items, rows, item, step)
            for _ in range(_REDRAW_TRIES):
                if not clash.any():
                    break
                (idx,) = np.nonzero(clash)
                topic[idx] = _draw_topic(user_cdf[idx], rng.random(len(idx)))
                item[idx] = _sample_in_topic(domain, topic[idx], rng.random(len(idx)))
                clash[idx] = _already(seen, items, idx, item[idx], step)
            ok = ~clash
            if seen is not None:
                seen[rows[ok], item[ok]] = True
            items[rows[ok], step] = item[ok]
            prev_item[:m] = np.where(ok, item, prev)
            prev_topic[:m] = np.where(ok, topic, prev_topic[:m])
        keep = items >= 0  # row-major flattening keeps each user's steps in order
        users_out.append(np.broadcast_to(users[:, None], items.shape)[keep])
        items_out.append(items[keep])
    user = np.concatenate(users_out) if users_out else np.zeros(0, dtype=np.int64)
    item = np.concatenate(items_out) if items_out else np.zeros(0, dtype=np.int64)
    regroup = np.argsort(user, kind="stable")  # batches came in length order; restore user order
    return user[regroup], item[regroup]


def _timestamps(
    rng: np.random.Generator, user: np.ndarray, window_start: np.ndarray, window_len: np.ndarray
) -> np.ndarray:
    """Increasing ms timestamps inside each user's window, for user-major flat arrays in time order.

    Normalised cumulative sums of exponential gaps are sorted uniform points (the Poisson-process trick),
    done for all users at once with segment offsets instead of a loop per user.
    """
    n_users = len(window_start)
    counts = np.bincount(user, minlength=n_users)
    seg_start = np.cumsum(counts) - counts
    present = counts > 0
    gaps = rng.exponential(size=len(user))
    cum = np.cumsum(gaps)
    before = np.zeros(n_users)
    before[present] = cum[seg_start[present]] - gaps[seg_start[present]]
    seg_total = np.zeros(n_users)
    seg_total[present] = cum[seg_start[present] + counts[present] - 1] - before[present]
    # One more gap after the last point, so a user's last interaction is not pinned to the window's end.
    frac = (cum - before[user]) / (seg_total + rng.exponential(size=n_users))[user]
    position = np.arange(len(user)) - seg_start[user]
    # Adding the position (ms) keeps timestamps strictly increasing where two floor() to the same ms;
    # windows are max_length ms shorter than the time left, so the result stays inside them.
    return window_start[user] + np.floor(frac * window_len[user]).astype(np.int64) + position


def _windows(rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's observed active period, shared by both domains: start ms, length ms, observed share.

    Activity periods are lognormal (median 18 months) and may run past end_ms, when the data was
    collected: the share of the period before end_ms thins the user's interactions, so recent users have
    short histories, as in real logs, and the data gets denser in later years as users accumulate.
    """
    day = 86_400_000
    latest_start = config.end_ms - 30 * day
    # Somewhat more users arrive in later years, as on Amazon.
    start = config.start_ms + rng.beta(1.25, 1.0, config.n_users) * (latest_start - config.start_ms)
    period = rng.lognormal(np.log(548.0), 0.8, config.n_users) * day
    observed = np.minimum(period, config.end_ms - start)
    # Leave max_length ms before end_ms for the +1 ms per position that _timestamps adds.
    length = np.maximum(observed - config.max_length, day)
    return start.astype(np.int64), length.astype(np.int64), observed / period


def _ratings(
    rng: np.random.Generator, config: SyntheticConfig, affinity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1-5 stars rising with taste-item affinity (mean ~4, as in Amazon reviews), and a null mask."""
    z = (affinity - affinity.mean()) / max(float(affinity.std()), 1e-9)
    stars = np.clip(np.rint(3.9 + 0.8 * z + 0.8 * rng.standard_normal(len(z))), 1, 5).astype(np.float32)
    return stars, rng.random(len(z)) < config.null_rating_fraction


def _ids(prefix: str, numbers: np.ndarray, min_width: int) -> pl.Series:
    """Raw ids like `SYNU000123`: the prefix, then the number zero-padded to a fixed width."""
    width = max(min_width, len(str(int(numbers.max(initial=0)))))
    return pl.select(
        id=pl.concat_str(pl.lit(prefix), pl.Series(numbers).cast(pl.String).str.zfill(width))
    ).to_series()


def _frame(
    config: SyntheticConfig,
    domain: _Domain,
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    rating: np.ndarray,
    null_rating: np.ndarray,
) -> pl.DataFrame:
    # Format each id once and gather by index: far cheaper than formatting millions of rows.
    users = _ids(config.user_prefix, np.arange(1, config.n_users + 1), 6)
    items = _ids(domain.item_prefix, domain.public_number, 5)
    return pl.DataFrame(
        {
            "user": users.gather(user),
            "item": items.gather(item),
            "rating": pl.Series(rating).set(pl.Series(null_rating), None),
            "timestamp": timestamp,
            "domain": pl.repeat(domain.name, len(user), eager=True),
        },
        schema=RAW_SCHEMA,
    )


def generate(config: SyntheticConfig = SyntheticConfig()) -> dict[str, pl.DataFrame]:
    """Domain name -> raw-schema frame (source first), rows by user then time. Deterministic per config."""
    users_seed, *domain_seeds = np.random.SeedSequence(config.seed).spawn(3)
    rng = np.random.default_rng(users_seed)
    n, d = config.n_users, config.latent_dim
    n_both = round(n * config.both_fraction)
    n_source_only = min(round(n * config.source_only_fraction), n - n_both)
    # 0: both domains, 1: source only, 2: target only; exact counts, in random user order.
    membership = rng.permutation(np.repeat([0, 1, 2], [n_both, n_source_only, n - n_both - n_source_only]))
    latent = rng.standard_normal((n, d))
    activity = rng.standard_normal(n)
    window_start, window_len, observed_share = _windows(rng, config)

    frames: dict[str, pl.DataFrame] = {}
    specs = (
        (config.source_domain, config.source_item_prefix, config.source_items, config.source_mean_length, 2),
        (config.target_domain, config.target_item_prefix, config.target_items, config.target_mean_length, 1),
    )
    for seed, (name, prefix, n_items, mean_length, absent) in zip(domain_seeds, specs, strict=True):
        rng = np.random.default_rng(seed)
        domain = _make_domain(rng, config, name, prefix, n_items)
        w = config.domain_specific_taste
        own = _unit(rng.standard_normal((n, d)))
        taste = _unit((1 - w) * _unit(latent @ domain.taste_map.T) + w * own)  # (U, d)
        # Lognormal lengths with the configured mean, correlated across the user's two domains.
        rho, sigma = _ACTIVITY_CORRELATION, config.length_sigma
        z = rho * activity + np.sqrt(1 - rho**2) * rng.standard_normal(n)
        raw_length = np.exp(np.log(mean_length) - sigma**2 / 2 + sigma * z)
        lengths = np.clip(np.rint(raw_length), 1, config.max_length).astype(np.int64)
        # Keep the interactions that fall before end_ms (binomial thinning of uniform points), but at
        # least one, so that who is in which domain stays exactly as configured.
        lengths = np.maximum(rng.binomial(lengths, observed_share), 1)
        lengths[membership == absent] = 0
        user, item = _sequences(rng, config, domain, taste, lengths)
        timestamp = _timestamps(rng, user, window_start, window_len)
        # taste . item vector, one latent column at a time: no (rows x d) temporaries at benchmark scale.
        affinity = sum(taste[user, j] * domain.item_vectors[item, j] for j in range(d))
        rating, null_rating = _ratings(rng, config, affinity)
        frames[name] = _frame(config, domain, user, item, timestamp, rating, null_rating)
    return frames


def write_raw(directory: Path, config: SyntheticConfig = SyntheticConfig()) -> dict[str, Path]:
    """Write `<directory>/<Domain>.parquet` per domain, each atomically; domain name -> path."""
    paths: dict[str, Path] = {}
    for name, frame in generate(config).items():
        path = Path(directory) / f"{name}.parquet"
        with atomic_path(path) as tmp:
            frame.write_parquet(tmp)
        paths[name] = path
    return paths
