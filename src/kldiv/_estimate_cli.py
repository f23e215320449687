"""``kldiv estimate X Y``: KL(P || Q) from two sets of samples (k nearest neighbours).

``X`` and ``Y`` are ``.npy`` or ``.csv`` files of samples, shape ``(n,)`` or ``(n, d)``, read
with the loader of ``kldiv kl`` (:func:`kldiv._expr.load_array`). Errors print one line
``kldiv: error: ...`` and exit with status 2.

>>> import numpy as np, os, tempfile
>>> from kldiv.cli import main
>>> rng = np.random.default_rng(0)
>>> d = tempfile.mkdtemp()
>>> np.save(os.path.join(d, "x.npy"), rng.normal(0, 1, 2000))
>>> np.save(os.path.join(d, "y.npy"), rng.normal(1, 1, 2000))
>>> main(["estimate", os.path.join(d, "x.npy"), os.path.join(d, "y.npy"), "--json"]) or None
... # doctest: +ELLIPSIS
{"kl": 0.5..., "units": "nats", ...}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, TextIO

from ._expr import load_array
from .errors import KLDivError
from .samples import ALGORITHMS, METHODS, METRICS, from_samples

DESCRIPTION = """\
Estimate KL(P || Q) from samples X of P and Y of Q with the k-nearest-neighbour estimator of
Wang, Kulkarni and Verdu (2009). X and Y are .npy or .csv files of shape (n,) or (n, d) (one
sample per row; a first .csv line that is not numbers is skipped as a header); n and m may
differ. Rounded or repeated points are dequantized (uniform noise of the data's resolution,
seeded) and the output says so.
"""

EPILOG = """\
examples:
  kldiv estimate x.npy y.npy
  kldiv estimate x.csv y.csv --k 10 --base 2 --bootstrap 200 --json

Errors print one line "kldiv: error: ..." on stderr and exit with status 2.
"""

_UNITS = {math.e: "nats", 2.0: "bits", 10.0: "hartleys"}


def _parse_base(text: str) -> float:
    if text.strip().lower() == "e":
        return math.e
    try:
        value = float(text)
    except ValueError:
        raise KLDivError(f"--base: expected e, 2, 10 or a positive number, got {text!r}") from None
    if not (value > 0 and value != 1 and math.isfinite(value)):
        raise KLDivError(f"--base: expected a positive number other than 1, got {text!r}")
    return value


def _units(base: float) -> str:
    return _UNITS.get(base, f"base-{base:g} units")


class ProgressBar:
    """A one-line progress bar on ``stream``, shown once a run has taken ``delay`` seconds."""

    def __init__(self, stream: TextIO, *, delay: float = 0.5, width: int = 30) -> None:
        self.stream, self.delay, self.width = stream, delay, width
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.shown and time.monotonic() - self.start < self.delay:
            return
        self.shown = True
        frac = done / total if total else 1.0
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\rkldiv estimate [{bar}] {100 * frac:5.1f}%")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _run_estimate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    base = _parse_base(args.base)
    x = load_array(args.x, what="X: file")
    y = load_array(args.y, what="Y: file")
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    bar = ProgressBar(sys.stderr, delay=0.0 if args.progress == "always" else 0.5)
    try:
        est = from_samples(
            x,
            y,
            k=args.k,
            method=args.method,
            metric=args.metric,
            base=base,
            bootstrap=args.bootstrap,
            level=args.level,
            seed=args.seed,
            algorithm=args.algorithm,
            duplicates="raise" if args.no_dequantize else "dequantize",
            progress=bar if show else None,
        )
    finally:
        bar.close()
    units = _units(base)
    if args.json:
        record: dict[str, Any] = {
            "kl": est.value,
            "units": units,
            "x": args.x,
            "y": args.y,
            "n": est.n,
            "m": est.m,
            "dim": est.dim,
            "k": est.k,
            "method": est.method,
            "metric": est.metric,
            "base": est.base,
            "stderr": est.stderr,
            "interval": list(est.interval) if est.interval else None,
            "level": args.level if est.interval else None,
            "dequantized": est.dequantized,
        }
        print(json.dumps(record))
        return 0
    print(f"x: {args.x}, {est.n} samples of dimension {est.dim}")
    print(f"y: {args.y}, {est.m} samples of dimension {est.dim}")
    print(f"estimator: {est.method} (Wang, Kulkarni, Verdu 2009), k={est.k}, metric={est.metric}")
    if est.dequantized:
        print(
            "note: repeated points were dequantized (uniform noise of the data's resolution, "
            f"seed {args.seed}): the estimate is that of the data's histograms"
        )
    print(f"KL(P || Q) ≈ {est.value:.6g} {units}")
    if est.interval is not None:
        lo, hi = est.interval
        print(
            f"{100 * args.level:g}% interval: [{lo:.6g}, {hi:.6g}] (stderr {est.stderr:.3g}, "
            f"{args.bootstrap} half-sample replicates; excludes the estimator's bias)"
        )
    return 0


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def add_estimate_parser(subparsers: Any) -> None:
    """Register ``kldiv estimate`` on the ``kldiv`` parser."""
    p = subparsers.add_parser(
        "estimate",
        help="KL(P || Q) from two sets of samples (k nearest neighbours)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("x", metavar="X", help="samples of P: a .npy or .csv file, (n,) or (n, d)")
    p.add_argument("y", metavar="Y", help="samples of Q: a .npy or .csv file, (m,) or (m, d)")
    p.add_argument("--k", type=int, default=5, help="the neighbour rank (default 5)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="knn",
        help="knn: fixed k (default); adaptive: per-point ranks, bias-reduced",
    )
    p.add_argument("--metric", choices=METRICS, default="euclidean")
    p.add_argument("--base", default="e", help="of the logarithm: e (nats, default), 2, 10, ...")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="B",
        help="half-sample replicates for a standard error and interval (default 0: none)",
    )
    p.add_argument("--level", type=_level, default=0.95, help="the interval's coverage")
    p.add_argument(
        "--seed", type=int, default=0, help="for dequantization and bootstrap (default 0)"
    )
    p.add_argument("--algorithm", choices=ALGORITHMS, default="auto", help=argparse.SUPPRESS)
    p.add_argument(
        "--no-dequantize",
        action="store_true",
        help="fail on repeated points instead of dequantizing them",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar on stderr: auto shows it on a terminal for runs over 0.5 s",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_estimate, subparser=p)
