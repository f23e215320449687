r"""KL(P || Q) from samples: the k-nearest-neighbour estimator, and plug-in KL from counts.

:func:`from_samples` implements the estimator of Wang, Kulkarni and Verdú (2009). For samples
:math:`x_1..x_n \sim P` and :math:`y_1..y_m \sim Q` in :math:`\mathbb R^d`, with
:math:`\rho_k(i)` the distance from :math:`x_i` to its k-th nearest neighbour among the other
:math:`x_j` and :math:`\nu_k(i)` to its k-th nearest neighbour among the :math:`y_j`,

.. math::

    \widehat{\mathrm{KL}} = \frac dn \sum_{i=1}^n \log\frac{\nu_k(i)}{\rho_k(i)}
        + \log\frac{m}{n - 1}.

It is consistent for any norm (the unit ball's volume cancels), so ``metric`` may be Euclidean
or Chebyshev. The ``"adaptive"`` variant (their bias-reduced form) takes, for each point,
:math:`\varepsilon_i = \max(\rho_k(i), \nu_k(i))`, counts the :math:`l_i` other x and
:math:`k_i` y points within it, and returns

.. math::

    \frac1n \sum_{i=1}^n \Big[d \log\frac{\nu_{k_i}(i)}{\rho_{l_i}(i)} + \psi(l_i) - \psi(k_i)\Big]
        + \log\frac{m}{n - 1},

which corrects most of the bias where the two densities differ at the scale of the
neighbourhoods. Measured bias and spread are in ``docs/estimators.md``
(``python benchmarks/samples.py`` reproduces them).

Duplicate points. The estimator needs densities: a point with k exact copies has
:math:`\rho_k = 0` and the formula gives :math:`\pm\infty`. That happens with rounded or
discrete-valued data. The policy (``duplicates=``):

- ``"dequantize"`` (default): if any point of ``x`` or ``y`` occurs twice, every coordinate gets
  uniform noise of the width of its resolution (the smallest gap between its distinct values in
  its own sample, x or y, ignoring gaps below 1e-12 of its magnitude), drawn with ``seed``. Rounded
  data is thereby read as the continuous data it was rounded from: the estimate is that of the
  KL between the data's histograms at its resolution. The result says so
  (``dequantized=True``) and ``kldiv estimate`` prints a note;
- ``"raise"``: a :class:`~kldiv.KLDivError` that counts the repeated points.

Either way the result is finite, or an error is raised: never a silent ``inf`` or NaN. For
data that is truly discrete, use :func:`from_counts`.

Speed. A KD-tree (``scipy.spatial.cKDTree``) up to dimension 10, a brute-force search by blocks
of matrix products above (trees lose to it in high dimension); the brute-force candidates'
distances are recomputed exactly, so both give the same result.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import KLDivError, bad, describe

METHODS = ("knn", "adaptive")
METRICS = ("euclidean", "chebyshev")
DUPLICATES = ("dequantize", "raise")
ALGORITHMS = ("auto", "kd_tree", "brute")

#: Above this dimension ``algorithm="auto"`` searches by brute force (Euclidean metric).
TREE_MAX_DIM = 10

_BLOCK_BYTES = 1 << 25  # memory for one block of the brute-force distance matrix

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SampleEstimate:
    """KL(P || Q) estimated from samples, with what it was computed from.

    ``float(est)`` is the value. ``stderr`` and ``interval`` are set only with ``bootstrap``;
    the interval is ``value ± z * stderr`` and does not include the estimator's bias.
    """

    value: float
    stderr: float | None
    interval: tuple[float, float] | None
    n: int
    m: int
    dim: int
    k: int
    method: str
    metric: str
    base: float
    dequantized: bool

    def __float__(self) -> float:
        return self.value


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------
def _as_samples(name: str, a: Any) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError, RuntimeError) as err:
        raise bad(name, "an array of samples (n,) or (n, d)", f"{describe(a)} ({err})") from None
    if arr.dtype.kind not in "iuf":
        raise bad(name, "a real numeric array of samples (n,) or (n, d)", describe(a))
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2 or arr.shape[1] == 0:
        raise bad(name, "samples of shape (n,) or (n, d) with d >= 1", f"shape {arr.shape}")
    arr = arr.astype(np.float64)  # a copy: the input is never modified
    bad_rows = ~np.isfinite(arr).all(axis=1)
    if bad_rows.any():
        i = int(np.argmax(bad_rows))
        raise bad(name, "finite values", f"{arr[i].tolist()} in row {i}")
    return arr


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise bad(name, "a positive int", describe(value))
    try:
        v = operator.index(value)
    except TypeError:
        raise bad(name, "a positive int", describe(value)) from None
    if v < 1:
        raise bad(name, "a positive int", str(v))
    return v


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise bad(name, f"one of {', '.join(map(repr, options))}", describe(value))
    return value


def _log_base(base: Any) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise bad(
            "base", "a positive number other than 1 (math.e for nats, 2 for bits)", describe(base)
        )
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise bad("base", "a positive number other than 1 (math.e for nats, 2 for bits)", str(base))
    return math.log(base)


# ----------------------------------------------------------------------------------------------
# Duplicates
# ----------------------------------------------------------------------------------------------
def _repeats(z: np.ndarray) -> int:
    """How many rows of ``z`` repeat an earlier row."""
    if z.shape[1] == 1:
        return z.shape[0] - np.unique(z[:, 0]).shape[0]
    return z.shape[0] - np.unique(z, axis=0).shape[0]


def _copies(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """For each row of ``x``, how many rows of ``y`` equal it exactly."""
    both = np.concatenate([x, y])
    _, inverse, counts_all = np.unique(both, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    in_x = np.bincount(inverse[: x.shape[0]], minlength=counts_all.shape[0])
    return (counts_all - in_x)[inverse[: x.shape[0]]]


def _resolution(column: np.ndarray) -> float:
    vals = np.unique(column)
    if vals.size < 2:
        return 0.0
    gaps = np.diff(vals)
    tol = 1e-12 * float(np.max(np.abs(vals)))
    gaps = gaps[gaps > tol]
    return float(gaps.min()) if gaps.size else 0.0


def _dequantize(x: np.ndarray, y: np.ndarray, seed: Any) -> tuple[np.ndarray, np.ndarray]:
    # each sample at its own resolution: rounded x against continuous y must not keep x's
    # spikes (a resolution taken from x and y together would be y's, near 0)
    hx = np.array([_resolution(x[:, j]) for j in range(x.shape[1])])
    hy = np.array([_resolution(y[:, j]) for j in range(y.shape[1])])
    rng = np.random.default_rng(seed)
    x2 = x + hx * (rng.random(x.shape) - 0.5)
    y2 = y + hy * (rng.random(y.shape) - 0.5)
    return x2, y2


# ----------------------------------------------------------------------------------------------
# Nearest-neighbour distances
# ----------------------------------------------------------------------------------------------
def _p(metric: str) -> float:
    return 2.0 if metric == "euclidean" else math.inf


def _exact_dist(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    diff = a - b
    if metric == "euclidean":
        return np.sqrt(np.sum(diff * diff, axis=-1))
    return np.max(np.abs(diff), axis=-1)


def _block_rows(n_ref: int, d: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(n_ref, 1) * max(d, 1)))


def _kth_tree(
    ref: np.ndarray, query: np.ndarray, kth: int, metric: str, report: Callable[[int], None]
) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(ref)
    out = np.empty(query.shape[0])
    step = 8192
    for start in range(0, query.shape[0], step):
        stop = min(start + step, query.shape[0])
        d, _ = tree.query(query[start:stop], k=[kth], p=_p(metric), workers=-1)
        out[start:stop] = d[:, 0]
        report(stop - start)
    return out


def _kth_brute(
    ref: np.ndarray,
    query: np.ndarray,
    kth: int,
    metric: str,
    self_excluded: bool,
    report: Callable[[int], None],
) -> np.ndarray:
    """The ``kth`` smallest distance from each query row to ``ref`` (to the other rows if
    ``self_excluded``, where ``query is ref``).

    Euclidean: one matrix product per block of rows gives ``|r|^2 / 2 - q.r``, which orders
    the ``ref`` points by distance; the candidates are the points of the ``kth + 2`` column
    groups with the smallest minima (every one of the ``kth`` nearest lies in such a group),
    the nearest ``kth + 3`` of them get their distances recomputed exactly from differences,
    and the ``kth`` smallest of those is returned. Chebyshev: blockwise exact distances.
    """
    n_q, d = query.shape
    n_r = ref.shape[0]
    out = np.empty(n_q)
    if metric == "chebyshev":
        rows = _block_rows(n_r, d)
        for start in range(0, n_q, rows):
            stop = min(start + rows, n_q)
            dist = _exact_dist(query[start:stop, None, :], ref[None, :, :], metric)
            if self_excluded:
                idx = np.arange(start, stop)
                dist[idx - start, idx] = np.inf
            out[start:stop] = np.partition(dist, kth - 1, axis=1)[:, kth - 1]
            report(stop - start)
        return out
    size = max(16, math.isqrt(n_r))  # column group size
    groups = -(-n_r // size)
    n_groups = min(groups, kth + 2)
    # the products are formed about the reference points' mean: far from the origin,
    # |r|^2/2 - q.r would lose the digits that order the neighbours (distances are invariant)
    center = ref.mean(axis=0)
    ref_c = ref - center
    ref_aug = np.full((groups * size, d + 1), 0.0)
    ref_aug[:n_r, :d] = -ref_c
    ref_aug[:n_r, d] = 0.5 * np.einsum("ij,ij->i", ref_c, ref_c)
    ref_aug[n_r:, d] = 1e300  # padding: never a candidate
    ref_aug_t = np.ascontiguousarray(ref_aug.T)
    n_cand = min(kth + 3, n_r - (1 if self_excluded else 0))
    rows = _block_rows(groups * size, 1)
    for start in range(0, n_q, rows):
        stop = min(start + rows, n_q)
        b = stop - start
        q = query[start:stop]
        q_aug = np.empty((b, d + 1))
        q_aug[:, :d] = q - center
        q_aug[:, d] = 1.0
        h = q_aug @ ref_aug_t  # |r|^2/2 - q.r: the same order as the distance
        if self_excluded:
            idx = np.arange(start, stop)
            h[idx - start, idx] = np.inf
        h3 = h.reshape(b, groups, size)
        if n_groups < groups:
            best = np.argpartition(h3.min(axis=2), n_groups - 1, axis=1)[:, :n_groups]
        else:
            best = np.broadcast_to(np.arange(groups), (b, groups))
        cols = (best[:, :, None] * size + np.arange(size)).reshape(b, -1)
        hc = np.take_along_axis(h, cols, axis=1)
        near = np.argpartition(hc, n_cand - 1, axis=1)[:, :n_cand]
        cand = np.take_along_axis(cols, near, axis=1)
        safe = np.minimum(cand, n_r - 1)
        exact = _exact_dist(q[:, None, :], ref[safe], metric)
        bogus = cand >= n_r
        if self_excluded:
            bogus |= cand == np.arange(start, stop)[:, None]
        exact = np.where(bogus, np.inf, exact)
        exact.sort(axis=1)
        out[start:stop] = exact[:, kth - 1]
        report(b)
    return out


def _use_tree(algorithm: str, metric: str, d: int) -> bool:
    if algorithm == "kd_tree":
        return True
    if algorithm == "brute":
        return False
    return d <= TREE_MAX_DIM


def _knn_distances(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    metric: str,
    tree: bool,
    report: Callable[[int], None],
    copies: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rho_k, nu_k)`` for every x; ``nu`` skips the ``copies`` of x_i in y (the same draw
    in both samples: from_samples(x, x) is then about 0, not a zero distance)."""
    if tree:
        rho = _kth_tree(x, x, k + 1, metric, report)  # the point itself is its first neighbour
    else:
        rho = _kth_brute(x, x, k, metric, True, report)
    nu = np.empty(x.shape[0])
    for c in np.unique(copies):
        sel = np.flatnonzero(copies == c)
        kth = k + int(c)
        if kth > y.shape[0]:
            nu[sel] = np.inf
            continue
        if tree:
            nu[sel] = _kth_tree(y, x[sel], kth, metric, report)
        else:
            nu[sel] = _kth_brute(y, x[sel], kth, metric, False, report)
    return rho, nu


def _counts_within(
    ref: np.ndarray, x: np.ndarray, eps: np.ndarray, metric: str, tree: bool, is_self: bool
) -> tuple[np.ndarray, np.ndarray]:
    """For each x: the number of ``ref`` points within ``eps`` (itself excluded if
    ``is_self``) and the largest distance among them."""
    n = x.shape[0]
    if tree:
        from scipy.spatial import cKDTree

        t = cKDTree(ref)
        counts = np.asarray(
            t.query_ball_point(x, eps, p=_p(metric), return_length=True, workers=-1)
        )
        if is_self:
            counts = counts - 1
        counts = np.maximum(counts, 1)
        far = np.empty(n)
        for c in np.unique(counts):
            sel = np.flatnonzero(counts == c)
            kth = int(c) + (1 if is_self else 0)
            d, _ = t.query(x[sel], k=[kth], p=_p(metric), workers=-1)
            far[sel] = d[:, 0]
        return counts, far
    counts = np.empty(n, dtype=np.int64)
    far = np.empty(n)
    rows = _block_rows(ref.shape[0], x.shape[1])  # the differences are (rows, n_ref, d)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        dist = _exact_dist(x[start:stop, None, :], ref[None, :, :], metric)
        if is_self:
            idx = np.arange(start, stop)
            dist[idx - start, idx] = np.inf
        inside = dist <= eps[start:stop, None]
        counts[start:stop] = np.maximum(inside.sum(axis=1), 1)
        far[start:stop] = np.max(np.where(inside, dist, -np.inf), axis=1)
    return counts, far


def _estimate(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    method: str,
    metric: str,
    algorithm: str,
    report: Callable[[int], None],
) -> tuple[float, np.ndarray, np.ndarray]:
    """The estimate in nats, with the two distance arrays (for the zero-distance check)."""
    n, d = x.shape
    m = y.shape[0]
    tree = _use_tree(algorithm, metric, d)
    copies = _copies(x, y)
    rho, nu = _knn_distances(x, y, k, metric, tree, report, copies)
    if method == "knn":
        with np.errstate(divide="ignore", invalid="ignore"):
            value = d * float(np.mean(np.log(nu) - np.log(rho))) + math.log(m / (n - 1))
        return value, rho, nu
    from scipy.special import digamma

    eps = np.maximum(rho, nu)
    l_i, rho_l = _counts_within(x, x, eps, metric, tree, True)
    k_i, nu_k = _counts_within(y, x, eps, metric, tree, False)
    k_i = k_i - copies  # a copy of x_i in y is the same draw, not a neighbour
    rho_side = rho >= nu  # the x side defines eps: l_i = k and rho_l = eps
    l_i = np.where(rho_side, k, np.maximum(l_i, 1))
    rho_l = np.where(rho_side, rho, rho_l)
    k_i = np.where(rho_side, np.maximum(k_i, 1), k)
    nu_k = np.where(rho_side, nu_k, nu)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = d * (np.log(nu_k) - np.log(rho_l)) + digamma(l_i) - digamma(k_i)
    return float(np.mean(terms)) + math.log(m / (n - 1)), rho_l, nu_k


# ----------------------------------------------------------------------------------------------
# from_samples
# ----------------------------------------------------------------------------------------------
def from_samples(
    x: Any,
    y: Any,
    *,
    k: int = 5,
    method: str = "knn",
    metric: str = "euclidean",
    base: float = math.e,
    duplicates: str = "dequantize",
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    algorithm: str = "auto",
    progress: Progress | None = None,
) -> SampleEstimate:
    r"""Estimate KL(P || Q) from samples ``x`` of P and ``y`` of Q (k nearest neighbours).

    .. math::

        \widehat{\mathrm{KL}} = \frac dn \sum_{i=1}^n \log\frac{\nu_k(i)}{\rho_k(i)}
            + \log\frac{m}{n - 1}

    (Wang, Kulkarni and Verdú 2009; see the module docstring for ``"adaptive"`` and for the
    duplicate-point policy).

    Args:
        x: samples of P, shape ``(n,)`` or ``(n, d)`` (converted to NumPy float64; never
            modified).
        y: samples of Q, shape ``(m,)`` or ``(m, d)``; ``m`` need not equal ``n``.
        k: the neighbour rank (``n > k`` and ``m >= k``). Larger k: less variance, more bias.
        method: ``"knn"`` (fixed k) or ``"adaptive"`` (per-point ranks, bias-reduced).
        metric: ``"euclidean"`` or ``"chebyshev"``.
        base: of the logarithm: ``math.e`` (nats), 2 (bits), 10.
        duplicates: ``"dequantize"`` or ``"raise"`` (module docstring).
        bootstrap: number of half-sample replicates for ``stderr`` and ``interval`` (0: none).
            Each estimates on half of x and half of y drawn without replacement (resampling
            with replacement would create the duplicates the estimator can't use); the spread
            of half-sample estimates approximates the full estimate's standard deviation.
        level: the interval's coverage (normal approximation).
        seed: for the dequantization noise and the bootstrap.
        algorithm: ``"auto"``, ``"kd_tree"`` or ``"brute"`` (same results; speed differs).
        progress: called as ``progress(done, total)`` as work proceeds (the command line's bar).

    Returns:
        A :class:`SampleEstimate`; ``float(result)`` is the estimate.

    >>> import numpy as np
    >>> import kldiv
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(0, 1, 4000), rng.normal(1, 1, 3000)   # KL = 0.5
    >>> round(float(kldiv.from_samples(x, y)), 1)
    0.5
    """
    xs, ys = _as_samples("x", x), _as_samples("y", y)
    if xs.shape[1] != ys.shape[1]:
        raise bad("y", f"samples of dimension {xs.shape[1]} like x", f"dimension {ys.shape[1]}")
    k = _positive_int("k", k)
    method = _choice("method", method, METHODS)
    metric = _choice("metric", metric, METRICS)
    duplicates = _choice("duplicates", duplicates, DUPLICATES)
    algorithm = _choice("algorithm", algorithm, ALGORITHMS)
    log_base = _log_base(base)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise bad("bootstrap", "a non-negative int (replicates; 0 for none)", describe(bootstrap))
    if isinstance(level, bool) or not isinstance(level, float) or not 0.0 < level < 1.0:
        raise bad("level", "a float in (0, 1)", describe(level))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise bad("seed", "a non-negative int", describe(seed))
    n, d = xs.shape
    m = ys.shape[0]
    need_n, need_m = (k + 1, k) if not bootstrap else (2 * k + 2, 2 * k)
    if n < need_n:
        raise bad("x", f"at least {need_n} samples for k={k}", f"{n}")
    if m < need_m:
        raise bad("y", f"at least {need_m} samples for k={k}", f"{m}")

    # The estimator is scale-free: a power of two brings the data near 1 exactly, so that
    # squared distances neither underflow nor overflow (data times 1e-200 or 1e160).
    top = float(max(np.max(np.abs(xs)), np.max(np.abs(ys))))
    if top > 0 and not 2.0**-64 <= top <= 2.0**64:
        scale = 2.0 ** -math.frexp(top)[1]
        xs, ys = xs * scale, ys * scale
    repeats = _repeats(xs) + _repeats(ys)  # points shared by x and y are not repeats: see _copies
    dequantized = False
    if repeats:
        if duplicates == "raise":
            raise bad(
                "x, y",
                "distinct points (the k-NN estimator needs densities)",
                f"{repeats} repeated points; pass duplicates='dequantize' or use from_counts",
            )
        xs, ys = _dequantize(xs, ys, seed)
        dequantized = True

    total = 2 * n * (1 + bootstrap)  # rho and nu for each x (the adaptive counts untracked)
    done = [0]

    def report(rows: int) -> None:
        done[0] += rows
        if progress is not None:
            progress(min(done[0], total), total)

    value, rho, nu = _estimate(xs, ys, k, method, metric, algorithm, report)
    if not (np.all(rho > 0) and np.all(nu > 0) and math.isfinite(value)):
        raise KLDivError(
            "x, y: expected points with distinct neighbours, got zero distances even after "
            "dequantization (a constant sample?); the k-NN estimator needs densities"
        )
    stderr = interval = None
    if bootstrap:
        rng = np.random.default_rng([seed, 1])
        reps = np.empty(bootstrap)
        for b in range(bootstrap):
            xi = rng.choice(n, n // 2, replace=False)
            yi = rng.choice(m, m // 2, replace=False)
            reps[b] = _estimate(xs[xi], ys[yi], k, method, metric, algorithm, lambda r: None)[0]
            report(2 * n)
        if not np.all(np.isfinite(reps)):
            raise KLDivError("bootstrap: a half-sample estimate was not finite; use more samples")
        from scipy.special import ndtri

        sd = float(np.std(reps, ddof=1)) / log_base if bootstrap > 1 else math.inf
        z = float(ndtri(0.5 + 0.5 * level))
        stderr = sd
        interval = (value / log_base - z * sd, value / log_base + z * sd)
    return SampleEstimate(
        value=value / log_base,
        stderr=stderr,
        interval=interval,
        n=n,
        m=m,
        dim=d,
        k=k,
        method=method,
        metric=metric,
        base=float(base),
        dequantized=dequantized,
    )


# ----------------------------------------------------------------------------------------------
# from_counts
# ----------------------------------------------------------------------------------------------
CORRECTIONS = ("none", "miller-madow")


def from_counts(
    counts_p: Any,
    counts_q: Any,
    *,
    pseudocount: float = 0.5,
    correction: str = "none",
    axis: int = -1,
    base: float = math.e,
) -> Any:
    r"""Plug-in KL(P || Q) from two histograms of counts over the same cells.

    .. math::

        \hat p_i = \frac{c^p_i + \alpha}{N_p + K\alpha},\quad
        \hat q_i = \frac{c^q_i + \alpha}{N_q + K\alpha},\qquad
        \widehat{\mathrm{KL}} = \sum_i \hat p_i \log\frac{\hat p_i}{\hat q_i}

    (computed with :func:`kldiv.kl` on the two ``Categorical`` s, so it is never negative and
    exact to a few ulp). The plug-in estimate is biased upwards; to first order in
    :math:`1/N`,

    .. math::

        \mathbb E[\widehat{\mathrm{KL}}] - \mathrm{KL}
        \approx \frac{K_p - 1}{2N_p} + \frac{\sum_i p_i/q_i - 1}{2N_q}

    with :math:`K_p` the number of cells where p > 0 (the first term is Miller and Madow's for
    the entropy, the second comes from :math:`\mathbb E[\log\hat q_i]`).
    ``correction="miller-madow"`` subtracts this bias evaluated at the estimates (:math:`K_p`
    the number of cells with a count in ``counts_p``); it removes most of the bias when every
    cell holds a few counts, and can make the estimate negative.

    Args:
        counts_p, counts_q: non-negative counts (ints or floats), the cells along ``axis``;
            further axes are separate histograms (broadcasting).
        pseudocount: :math:`\alpha \ge 0` added to every cell of both (0.5, the
            Krichevsky-Trofimov choice, by default). With 0, a cell counted in p but not in q
            gives ``+inf`` (the plug-in answer; no warning).
        correction: ``"none"`` or ``"miller-madow"``.
        axis: the cell axis.
        base: of the logarithm (``math.e`` for nats, 2 for bits).

    Returns:
        A float for one histogram, else a NumPy array.

    >>> import kldiv
    >>> round(kldiv.from_counts([10, 30], [20, 20], pseudocount=0.0), 6)
    0.130812
    """
    from ._kl import kl
    from .dists import Categorical

    cp, cq = _as_counts("counts_p", counts_p), _as_counts("counts_q", counts_q)
    if isinstance(pseudocount, bool) or not isinstance(pseudocount, (int, float)):
        raise bad("pseudocount", "a non-negative number", describe(pseudocount))
    if not (pseudocount >= 0 and math.isfinite(pseudocount)):
        raise bad("pseudocount", "a non-negative number", str(pseudocount))
    correction = _choice("correction", correction, CORRECTIONS)
    log_base = _log_base(base)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise bad("axis", "an int", describe(axis))
    try:
        cp, cq = np.broadcast_arrays(cp, cq)
    except ValueError:
        raise bad(
            "counts_q", f"a shape that broadcasts with counts_p's {cp.shape}", f"shape {cq.shape}"
        ) from None
    if cp.ndim == 0 or not -cp.ndim <= axis < cp.ndim:
        raise bad("axis", f"an axis of counts of shape {cp.shape}", str(axis))
    cp, cq = np.moveaxis(cp, axis, -1), np.moveaxis(cq, axis, -1)
    n_p, n_q = cp.sum(axis=-1), cq.sum(axis=-1)
    for name, total in (("counts_p", n_p), ("counts_q", n_q)):
        if np.any(total <= 0):
            raise bad(name, "a histogram with at least one count", "all zeros")
    a = float(pseudocount)
    ph, qh = cp + a, cq + a
    if np.any(np.sum(qh > 0, axis=-1) == 0):  # pragma: no cover - excluded by the totals
        raise bad("counts_q", "a histogram with at least one count", "all zeros")
    value = np.asarray(kl(Categorical(probs=ph), Categorical(probs=qh)))
    if correction == "miller-madow":
        p_hat = ph / ph.sum(axis=-1, keepdims=True)
        q_hat = qh / qh.sum(axis=-1, keepdims=True)
        both = (p_hat > 0) & (q_hat > 0)
        ratio = np.sum(np.where(both, p_hat / np.where(both, q_hat, 1.0), 0.0), axis=-1)
        k_p = np.sum(cp > 0, axis=-1)
        with np.errstate(invalid="ignore"):
            bias = (k_p - 1) / (2.0 * n_p) + (ratio - 1.0) / (2.0 * n_q)
        value = np.where(np.isfinite(value), value - bias, value)
    value = value / log_base
    return float(value) if value.ndim == 0 else value


def _as_counts(name: str, c: Any) -> np.ndarray:
    arr = np.asarray(c)
    if arr.dtype.kind not in "iuf":
        raise bad(name, "non-negative counts (ints or floats)", describe(c))
    arr = arr.astype(np.float64)
    if arr.ndim == 0:
        raise bad(name, "an array of counts with a cell axis", "a single number")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        i = np.unravel_index(int(np.argmax(~np.isfinite(arr) | (arr < 0))), arr.shape)
        raise bad(f"{name}[{', '.join(map(str, i))}]", "a non-negative finite count", str(arr[i]))
    return arr
