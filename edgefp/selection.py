"""Choosing the model whose fingerprint matches unlabeled target data (docs/selection.md).

1. Coarse filter on the index: the target samples must fit the model's input shape, and the tags
   must match ``--where``.
2. Fine match: each candidate's int8 bundle scores the target samples (LiteRT); per piece of
   evidence (autoencoder errors, max logit), the target's values are compared with
   their held-out distribution stored in the fingerprint (``layers[].holdout_quantiles``) by a
   Kolmogorov-Smirnov distance. The match score is the largest distance divided by its critical value
   at the sample sizes, so 1.0 is the edge of what in-distribution data shows by chance (after a
   Bonferroni correction over the evidence). Candidates rank by that score, lowest first.
3. Verdict: the best candidate fits when its match score is at most 1 and the share of target samples
   it flags as OOD is within what in-distribution data shows by chance, given the target's size and
   the number of held-out samples its threshold was set on; otherwise ``no suitable model``. Among the
   candidates that fit, one retrained from another (its lineage in the repository) ranks before it:
   it knows what its parent knows and what was added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgefp.data import shape_fits
from edgefp.errors import EdgefpError, option
from edgefp.repository import Entry, Repository

ALPHA = 0.01  # false "no suitable model" rate the verdict allows for in-distribution target data
NO_MATCH = "no suitable model"


def ks_distance(values: np.ndarray, reference_quantiles: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the sample ``values`` and the distribution given by its
    quantiles at 0, 1, ..., 100 %: the largest gap between the two CDFs, taken on both sides of every
    jump (int8 errors take few distinct values, so both CDFs are step functions)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    quantiles = np.sort(np.asarray(reference_quantiles, dtype=np.float64))
    points = np.union1d(values, quantiles)
    levels = len(quantiles) - 1

    def reference(side: str) -> np.ndarray:
        # the reference CDF rises by 1/100 at each of q_1 .. q_100 (0 below q_1, 1 from q_100 on)
        return np.clip(np.searchsorted(quantiles, points, side=side) - 1, 0, levels) / levels

    ref_right, ref_left = reference("right"), reference("left")
    emp_right = np.searchsorted(values, points, side="right") / len(values)
    emp_left = np.searchsorted(values, points, side="left") / len(values)
    return float(max(np.max(np.abs(emp_right - ref_right)), np.max(np.abs(emp_left - ref_left))))


def ks_critical(n: int, m: int, layers: int, alpha: float = ALPHA) -> float:
    """Two-sample KS critical distance at level ``alpha / layers`` for n target and m held-out samples."""
    c = math.sqrt(-0.5 * math.log(alpha / layers / 2.0))
    return c * math.sqrt(1.0 / n + 1.0 / m)


def ood_tolerance(n: int, fpr: float, m: int | None = None, alpha: float = ALPHA) -> int:
    """The largest number of flagged samples out of ``n`` that in-distribution data reaches with
    probability at least ``1 - alpha``.

    Without ``m`` each sample is flagged with probability ``fpr`` (binomial). With ``m``, the number of
    held-out samples the threshold was set on, that probability is only known as well as they tell:
    the threshold leaves ``k`` of them above it, so the probability follows Beta(k + 1, m - k) and the
    count a beta-binomial, wider for a small hold-out set."""
    if m is None:
        log_pmf = [math.log(math.comb(n, x)) + x * math.log(fpr) + (n - x) * math.log1p(-fpr) for x in range(n + 1)]
    else:
        above = m - 1 - math.ceil((1.0 - fpr) * (m - 1))  # above the 'higher' (1 - fpr) quantile of m values
        a, b = above + 1, m - above
        log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
        log_pmf = [
            math.log(math.comb(n, x)) + math.lgamma(x + a) + math.lgamma(n - x + b) - math.lgamma(n + a + b) - log_beta
            for x in range(n + 1)
        ]
    tail = 1.0
    for k, log_p in enumerate(log_pmf):
        tail -= math.exp(log_p)
        if tail <= alpha:
            return k
    return n


@dataclass
class Match:
    name: str
    match_score: float  # max over layers of KS / critical value; <= 1 is consistent with the fingerprint
    layer_ks: list[float]
    ks_critical: float
    ood_share: float
    ood_tolerance: float  # the largest OOD share that still fits, from target_fpr and the sample size
    target_fpr: float
    mean_confidence: float
    fits: bool
    tags: dict
    superseded_by: str | None = None  # a bundle retrained from this one that fits too

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def match(bundle, x: np.ndarray, name: str = "", tags: dict | None = None, runtime: str = "litert") -> Match:
    """Score target samples ``x`` with ``bundle`` and compare them with its fingerprint."""
    scores = bundle.score(x, runtime)
    manifest = bundle.manifest
    n, n_layers = len(x), len(manifest.layers)
    m = int(manifest.score.n_holdout or 101)
    distances = [
        ks_distance(scores.layer_errors[:, j], layer.holdout_quantiles) for j, layer in enumerate(manifest.layers)
    ]
    critical = ks_critical(n, m, n_layers)
    fpr = float(manifest.score.target_fpr)
    tolerance = ood_tolerance(n, fpr, m)
    flagged = int(np.sum(scores.is_ood))
    score = max(distances) / critical
    return Match(
        name=name or manifest.name,
        match_score=float(score),
        layer_ks=[round(d, 4) for d in distances],
        ks_critical=float(critical),
        ood_share=flagged / n,
        ood_tolerance=tolerance / n,
        target_fpr=fpr,
        mean_confidence=float(np.mean(np.max(scores.probs, axis=1))),
        fits=bool(score <= 1.0 and flagged <= tolerance),
        tags=dict(tags or {}),
    )


def candidates(repo: Repository, sample_shape: tuple[int, ...], where: dict[str, str] | None = None) -> list[Entry]:
    """The coarse filter: indexed bundles matching ``where`` whose input takes ``sample_shape``."""
    every = repo.entries()
    if not every:
        raise EdgefpError(f"the repository {repo.root} is empty; add bundles with 'edgefp repo add BUNDLE'")
    tagged = [entry for entry in every if entry.matches(where or {})]
    if not tagged:
        wanted = " ".join(f"{key}={value}" for key, value in (where or {}).items())
        raise EdgefpError(f"no bundle in {repo.root} matches {option('where')} {wanted} ({len(every)} bundles in all)")
    fitting = [entry for entry in tagged if shape_fits(sample_shape, entry.input_shape)]
    if not fitting:
        shapes: dict[tuple, int] = {}
        for entry in tagged:
            shapes[entry.input_shape] = shapes.get(entry.input_shape, 0) + 1
        listed = ", ".join(f"{shape} ({count} bundles)" for shape, count in sorted(shapes.items()))
        raise EdgefpError(
            f"target samples have shape {tuple(sample_shape)}, but no candidate takes it; the repository's "
            f"input shapes are: {listed}"
        )
    return fitting


def _prefer_descendants(matches: list[Match], parents: dict[str, str | None]) -> None:
    """Mark each fitting match that a fitting descendant (retrained from it, directly or not) supersedes."""

    def ancestors(name: str) -> set[str]:
        found: set[str] = set()
        while parents.get(name) and parents[name] not in found:
            name = parents[name]
            found.add(name)
        return found

    fitting = sorted((found for found in matches if found.fits), key=lambda found: found.match_score)
    for found in fitting:
        found.superseded_by = next((d.name for d in fitting if found.name in ancestors(d.name)), None)


def select(repo: Repository, x: np.ndarray, *, where: dict[str, str] | None = None, runtime: str = "litert") -> dict:
    """Rank every fitting bundle by how well ``x`` matches its fingerprint; say which one to use, if any.

    Bundles that fail verification (corrupt, tampered, missing) are skipped with a warning in
    ``report["skipped"]`` and never selected.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise EdgefpError("the target data set is empty")
    matches, skipped = [], []
    for entry in candidates(repo, x.shape[1:], where):
        try:
            bundle = repo.load(entry)
        except EdgefpError as exc:
            skipped.append({"name": entry.name, "reason": str(exc)})
            continue
        matches.append(match(bundle, x, entry.name, entry.tags, runtime))
    if not matches:
        raise EdgefpError(
            f"none of the {len(skipped)} candidate bundles verifies ({skipped[0]['reason']}); run 'edgefp repo reindex'"
        )
    _prefer_descendants(matches, {entry.name: entry.parent for entry in repo.entries()})
    matches.sort(
        key=lambda found: (not found.fits, found.superseded_by is not None, found.match_score, found.ood_share)
    )
    best = matches[0]
    return {
        "repo": repo.root,
        "n": int(len(x)),
        "selected": best.name if best.fits else None,
        "verdict": best.name if best.fits else NO_MATCH,
        "candidates": [found.as_dict() for found in matches],
        "skipped": skipped,
        "alpha": ALPHA,
    }


def deploy(repo: Repository, name: str, device) -> dict:
    """Flash the repository's bundle ``name`` to an open ``device`` and activate it; nothing is uploaded
    when the device already runs it (``skipped`` in the report of
    :func:`edgefp.firmware_host.link.client.flash`)."""
    from edgefp.firmware_host.link import client

    archive = repo.load(repo.entry(name)).archive_bytes()
    return client.flash(device, archive)
