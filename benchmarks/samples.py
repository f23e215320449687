"""KL from samples: speed and bias of kldiv.from_samples, and the alternatives in the same run.

    python benchmarks/samples.py            # everything (a few minutes on 2 cores)
    python benchmarks/samples.py --quick    # fewer repetitions

Alternatives measured when installed (each is skipped cleanly otherwise): ``divergence``
(``knn_kl_divergence``), ``infomeasure`` (``kld(approach="metric")``) and
``universal-divergence`` (``estimate``). Times are the best of a few runs, so the ratios
(alternative / kldiv) compare like with like; every alternative gets the same data.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np

import kldiv


def _alternatives() -> dict[str, Callable[[np.ndarray, np.ndarray, int], float]]:
    alts: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
        "kldiv": lambda x, y, k: kldiv.from_samples(x, y, k=k).value
    }
    try:
        import divergence

        alts["divergence"] = lambda x, y, k: float(divergence.knn_kl_divergence(x, y, k=k))
    except ImportError:
        print("(divergence not installed: skipped)")
    try:
        import infomeasure

        alts["infomeasure"] = lambda x, y, k: float(infomeasure.kld(x, y, approach="metric", k=k))
    except ImportError:
        print("(infomeasure not installed: skipped)")
    try:
        import universal_divergence

        alts["universal-divergence"] = lambda x, y, k: float(
            universal_divergence.estimate(x.reshape(len(x), -1), y.reshape(len(y), -1), k=k)
        )
    except ImportError:
        print("(universal-divergence not installed: skipped)")
    return alts


def _safe(fn: Callable[[], float]) -> tuple[float | None, str]:
    try:
        with np.errstate(all="ignore"):
            return float(fn()), ""
    except Exception as err:  # an alternative that crashes is a result too
        return None, f"{type(err).__name__}: {str(err)[:60]}"


def _best_time(fn: Callable[[], float], repeat: int) -> tuple[float, float | None, str]:
    best = math.inf
    value, err = None, ""
    for _ in range(repeat):
        t = time.perf_counter()
        value, err = _safe(fn)
        best = min(best, time.perf_counter() - t)
        if err or best > 20:
            break
    return best, value, err


def speed(alts: dict, repeat: int) -> None:
    print("\n## Speed: n = m = 10^4, k = 5, N(0, I) vs N(e1, I) (seconds, best of runs)\n")
    print("| d | " + " | ".join(alts) + " |")
    print("|---|" + "---|" * len(alts))
    rng = np.random.default_rng(0)
    kldiv.from_samples(rng.normal(size=50), rng.normal(size=50))  # imports, warm caches
    for d in (1, 10, 50):
        x = rng.normal(size=(10_000, d))
        y = rng.normal(size=(10_000, d))
        y[:, 0] += 1.0
        if d == 1:
            x, y = x[:, 0], y[:, 0]
        cells = []
        base = None
        for name, fn in alts.items():
            t, _, err = _best_time(lambda fn=fn, x=x, y=y: fn(x, y, 5), repeat)
            if name == "kldiv":
                base = t
                cells.append(f"{t:.3f}")
            elif err:
                cells.append(f"fails ({err})")
            else:
                cells.append(f"{t:.3f} ({t / base:.1f}x)")
        print(f"| {d} | " + " | ".join(cells) + " |")


def _stats(fn: Callable[[np.ndarray, np.ndarray, int], float], make, reps: int, k: int = 5):
    vals, errs = [], set()
    for r in range(reps):
        x, y = make(np.random.default_rng(1000 + r))
        v, err = _safe(lambda x=x, y=y: fn(x, y, k))
        if err:
            errs.add(err)
        elif v is not None:
            vals.append(v)
    return np.array(vals), errs


def accuracy(alts: dict, reps: int) -> None:
    cases = [
        ("1-D N(0,1) vs N(1,1), n = m = 1000", 0.5, 1000, 1000, 1, False, reps),
        ("1-D, n = m = 10^4", 0.5, 10_000, 10_000, 1, False, max(reps // 5, 4)),
        ("1-D, n = 1000, m = 3000", 0.5, 1000, 3000, 1, False, reps),
        ("1-D rounded to 0.1, n = m = 1000", 0.5, 1000, 1000, 1, True, reps),
        ("10-D self-divergence, n = m = 1000", 0.0, 1000, 1000, 10, False, max(reps // 4, 5)),
    ]
    print("\n## Bias and spread (k = 5; mean - truth, sd over seeded repetitions)\n")
    print("| case | truth | " + " | ".join(alts) + " |")
    print("|---|---|" + "---|" * len(alts))
    for title, truth, n, m, d, rounded, r in cases:

        def make(rng, n=n, m=m, d=d, rounded=rounded, truth=truth):
            x = rng.normal(size=(n, d))
            y = rng.normal(size=(m, d))
            if truth:
                y[:, 0] += 1.0
            if rounded:
                x, y = np.round(x, 1), np.round(y, 1)
            return (x[:, 0], y[:, 0]) if d == 1 else (x, y)

        cells = []
        for fn in alts.values():
            vals, errs = _stats(fn, make, r)
            finite = vals[np.isfinite(vals)]
            if len(finite) < 2:
                shown = next(iter(errs), "") or f"non-finite ({vals[:1].tolist()})"
                cells.append(f"fails: {shown}")
                continue
            note = f", {len(vals) - len(finite)} non-finite" if len(finite) < len(vals) else ""
            note += f", {len(errs)} error kinds" if errs else ""
            cells.append(f"{finite.mean() - truth:+.3f} ± {finite.std(ddof=1):.3f}{note}")
        print(f"| {title} | {truth} | " + " | ".join(cells) + " |")


def bias_10d(reps: int) -> None:
    print("\n## kldiv in 10-D: bias (mean - truth) and sd, k = 5\n")
    print("| case | KL | n = m = 1000 | n = m = 10^4 | adaptive, n = m = 1000 |")
    print("|---|---|---|---|---|")
    d = 10
    cov = 0.5 ** np.abs(np.subtract.outer(np.arange(d), np.arange(d)))  # AR(1), rho = 0.5
    chol = np.linalg.cholesky(cov)
    cases = [
        ("N(0, I) vs N(0, I)", 0.0, lambda r, n: (r.normal(size=(n, d)), r.normal(size=(n, d)))),
        (
            "N(0, I) vs N(e1, I)",
            0.5,
            lambda r, n: (r.normal(size=(n, d)), r.normal(size=(n, d)) + np.eye(d)[0]),
        ),
        (
            "N(0, I) vs N(0, 2I)",
            0.5 * d * (0.5 - 1 + math.log(2)),
            lambda r, n: (r.normal(size=(n, d)), math.sqrt(2) * r.normal(size=(n, d))),
        ),
        (
            "N(0, AR(0.5)) vs N(0, I)",
            0.5 * (np.trace(cov) - d - np.linalg.slogdet(cov)[1]),
            lambda r, n: (r.normal(size=(n, d)) @ chol.T, r.normal(size=(n, d))),
        ),
    ]
    for title, truth, make in cases:
        cells = []
        for n, r, method in (
            (1000, reps, "knn"),
            (10_000, max(reps // 4, 3), "knn"),
            (1000, reps, "adaptive"),
        ):
            vals = []
            for i in range(r):
                x, y = make(np.random.default_rng(2000 + i), n)
                vals.append(kldiv.from_samples(x, y, method=method).value)
            vals = np.array(vals)
            cells.append(f"{vals.mean() - truth:+.3f} ± {vals.std(ddof=1):.3f}")
        print(f"| {title} | {truth:.3f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    reps = 20 if args.quick else 100
    alts = _alternatives()
    speed(alts, repeat=3)
    accuracy(alts, reps)
    bias_10d(8 if args.quick else 20)


if __name__ == "__main__":
    main()
