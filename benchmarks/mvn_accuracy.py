"""Worst relative error of kldiv's MultivariateNormal KL against mpmath at condition number 1e6,
over every pair of parametrizations, in float64 and float32 (the cases of tests/closed/test_mvn.py).

    python benchmarks/mvn_accuracy.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root / "tests"), str(root / "tests" / "closed")]

import test_mvn as cases  # noqa: E402

import kldiv  # noqa: E402


def main() -> None:
    worst: dict[str, float] = {}
    for s in range(40):
        k = 2 + s % 5
        loc_p, cov_p, loc_q, cov_q = cases.case(1000 + s, k, 1e6)
        for dt in ("float64", "float32"):
            a, b = loc_p.astype(cases.NP_DTYPE[dt]), loc_q.astype(cases.NP_DTYPE[dt])
            for pp, pq in itertools.product(cases.PARAMS, cases.PARAMS):
                m1, m2 = cases.as_param(cov_p, pp, dt), cases.as_param(cov_q, pq, dt)
                got = float(kldiv.kl(cases.mvn(a, pp, m1), cases.mvn(b, pq, m2)))
                want = cases.kl_exact(a, cases.exact_cov(pp, m1), b, cases.exact_cov(pq, m2))
                worst[dt] = max(worst.get(dt, 0.0), abs(got - want) / want)
    for dt, err in worst.items():
        print(f"{dt}: worst relative error {err:.2g} over 360 cases (k = 2..6, condition 1e6)")


if __name__ == "__main__":
    main()
