"""Deciding what a function's outputs are, given the exact values of candidate hypotheses.

A *probe* is one call: inputs whose axes carry symbols (``B`` batch, ``D`` latent size, ``C``
classes, ``T`` sequence length), an optional mask, and the function's output. A *hypothesis*
gives, for each probe, an array of *elements* over the input axes (per-element KL values, or
per-class KL terms) whose sum is the exact answer. The fit asks: is the output, for every
probe, ``k / N`` times the elements summed over the axes the output lacks, with one constant
``k`` and ``N`` a product of the symbols (the valid count ``M`` of a mask included)? Probe
shapes are chosen so that different ``N`` cannot imitate one another.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass
class Probe:
    """One call's inputs (as symbols and a mask) and output."""

    axes: tuple[str, ...]  # symbol of each input axis
    sizes: dict[str, int]  # symbol -> size; ``M`` is the number of valid mask positions
    output: np.ndarray
    tol: float  # relative tolerance from the output dtype
    mask: np.ndarray | None = None  # broadcastable to the input shape, True where valid
    se: np.ndarray | None = None  # standard error of the output (a mean over many calls)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.sizes[s] for s in self.axes)


def tolerance(dtype: str) -> float:
    """Relative agreement asked of a function computing in ``dtype``."""
    if "16" in dtype:
        return 2e-2
    if "32" in dtype:
        return 5e-4
    return 1e-4  # float64: room for the epsilons real code adds (log(p + 1e-5))


def kept_axes(out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Input axes the output kept (size-1 output axes ignored), or None if it matches none."""
    dims = [n for n in out_shape if n != 1]
    kept = []
    for n in dims:
        hits = [i for i, m in enumerate(in_shape) if m == n and i not in kept]
        if len(hits) != 1:
            return None
        kept.append(hits[0])
    return tuple(kept)


@dataclass
class Fit:
    """How well one hypothesis explains the outputs."""

    kept: tuple[str, ...]  # symbols of the axes the output keeps, in output order
    denominator: tuple[str, ...]  # symbols whose product divides (``k / N``)
    k: float
    error: float  # worst relative residual over all probes
    ok: bool

    @property
    def factor(self) -> str:
        return format_factor(self.k, self.denominator)


def reduce_elements(probe: Probe, elements: np.ndarray, kept: tuple[int, ...]) -> np.ndarray:
    e = np.broadcast_to(elements, probe.shape)
    if probe.mask is not None:
        e = np.where(np.broadcast_to(probe.mask, probe.shape), e, 0.0)
    reduced = tuple(i for i in range(len(probe.shape)) if i not in kept)
    s = e.sum(axis=reduced)
    remaining = sorted(kept)
    # ``s`` has the kept axes in input order; put them in output order
    return np.transpose(s, [remaining.index(a) for a in kept]) if kept else s


def _valid_kept(probe: Probe, kept: tuple[int, ...]) -> np.ndarray | None:
    if probe.mask is None or not kept:
        return None
    m = np.broadcast_to(probe.mask, probe.shape)
    reduced = tuple(i for i in range(len(probe.shape)) if i not in kept)
    valid = m.any(axis=reduced)
    remaining = sorted(kept)
    return np.transpose(valid, [remaining.index(a) for a in kept])


def denominators(symbols: Sequence[str]) -> list[tuple[str, ...]]:
    """Every product of distinct symbols, smallest first (the empty product is 1), then the
    products with one symbol squared (a code that divides by the tokens twice)."""
    out: list[tuple[str, ...]] = []
    for r in range(len(symbols) + 1):
        out.extend(itertools.combinations(symbols, r))
    singles = list(out)
    for sym in symbols:
        out.extend(tuple(sorted((*c, sym), key=symbols.index)) for c in singles if sym in c)
    return out


Z_LIMIT = 4.5  # standard errors a mean over many calls may stray from its expectation


def fit(probes: Sequence[Probe], elements: Sequence[np.ndarray]) -> Fit | None:
    """The best ``k / N`` explanation of the outputs by the elements, or None if impossible.

    ``ok`` says whether it explains them within the probes' tolerance. Probes of different
    ranks fit together: a symbol missing from a probe has size 1 there, and the axes an output
    keeps must agree (a rank-2 probe keeps the rank-3 probes' kept axes that it has). Probes
    with a standard error (means of a function that samples inside) are fitted on their totals.
    """
    kept_by_probe: list[tuple[str, ...]] = []
    for probe in probes:
        y = np.asarray(probe.output, dtype=np.float64)
        kept = kept_axes(y.shape, probe.shape)
        if kept is None:
            return None
        kept_by_probe.append(tuple(probe.axes[i] for i in kept))
    kept_syms = max(kept_by_probe, key=len)
    for probe, syms in zip(probes, kept_by_probe, strict=True):
        if syms != tuple(s for s in kept_syms if s in probe.axes):
            return None
    symbols = [s for s in dict.fromkeys(sym for p in probes for sym in p.sizes)]
    if any(p.se is not None for p in probes):
        return _fit_noisy(probes, elements, kept_syms, symbols)
    ratios, worst_in_probe = [], 0.0
    for probe, e, syms in zip(probes, elements, kept_by_probe, strict=True):
        y = np.asarray(probe.output, dtype=np.float64)
        kept = tuple(probe.axes.index(sym) for sym in syms)
        s = reduce_elements(probe, e, kept)
        y = y.reshape(s.shape)
        valid = _valid_kept(probe, kept)
        if valid is not None:
            y, s = y[valid], s[valid]
        if not np.all(np.isfinite(y)) or not np.all(np.isfinite(s)):
            return None
        ss = float(np.sum(s * s))
        if ss == 0.0:
            return None
        r = float(np.sum(y * s) / ss)
        scale = max(float(np.max(np.abs(r * s))), 1e-300)
        worst_in_probe = max(worst_in_probe, float(np.max(np.abs(y - r * s))) / scale)
        ratios.append(r)
    dens, counts = _den_table(tuple(symbols))
    logs = np.log([[p.sizes.get(sym, 1) for sym in symbols] for p in probes])  # probes x symbols
    values = np.asarray(ratios)[None, :] * np.exp(counts @ logs.T)  # dens x probes
    ks = np.median(values, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        spreads = np.max(np.abs(values - ks[:, None]), axis=1) / np.abs(ks)
    best: Fit | None = None
    for den, k, spread in zip(dens, ks, spreads, strict=True):
        if k == 0.0 or not np.isfinite(k):
            continue
        error = max(float(spread), worst_in_probe)
        if best is None or error < best.error * 0.5:  # a bigger N must fit clearly better
            best = Fit(kept_syms, den, float(k), error, False)
    if best is None:
        return None
    tol = max(p.tol for p in probes)
    best.ok = best.error <= tol
    if best.ok:
        best.k = snap(best.k, tol)
    return best


_DEN_TABLES: dict[tuple[str, ...], tuple[list[tuple[str, ...]], np.ndarray]] = {}


def _den_table(symbols: tuple[str, ...]) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The denominators over ``symbols`` and, per denominator, how often each symbol occurs."""
    if symbols not in _DEN_TABLES:
        dens = denominators(symbols)
        counts = np.array([[den.count(s) for s in symbols] for den in dens], dtype=np.float64)
        _DEN_TABLES[symbols] = (dens, counts)
    return _DEN_TABLES[symbols]


def _size(probe: Probe, den: Sequence[str]) -> int:
    return math.prod(probe.sizes.get(s, 1) for s in den)


def _fit_noisy(probes, elements, kept_syms, symbols) -> Fit | None:
    """The fit on output totals, each with its standard error (a z-test across probes)."""
    ratios, errs = [], []
    for probe, e in zip(probes, elements, strict=True):
        el = np.broadcast_to(e, probe.shape)
        if probe.mask is not None:
            el = np.where(np.broadcast_to(probe.mask, probe.shape), el, 0.0)
        total_e = float(np.sum(el))
        y = float(np.sum(probe.output))
        se = 0.0 if probe.se is None else float(np.sqrt(np.sum(np.square(probe.se))))
        if not np.isfinite(total_e) or total_e == 0.0 or not np.isfinite(y):
            return None
        ratios.append(y / total_e)
        errs.append(max(se / abs(total_e), 1e-12 * abs(y / total_e)))
    best: Fit | None = None
    best_z = math.inf
    for den in denominators(symbols):
        n = np.array([_size(p, den) for p in probes], dtype=np.float64)
        v, sv = np.asarray(ratios) * n, np.asarray(errs) * n
        w = 1.0 / sv**2
        k = float(np.sum(w * v) / np.sum(w))
        if k == 0.0 or not np.isfinite(k):
            continue
        z = float(np.max(np.abs(v - k) / sv))
        if z < best_z * 0.5 or (best_z > Z_LIMIT and z < best_z):
            best_z = z
            error = float(np.max(np.abs(v - k))) / abs(k)
            best = Fit(kept_syms, den, k, error, z <= Z_LIMIT)
    if best is not None and best.ok:
        se_k = 1.0 / math.sqrt(
            sum(
                1.0 / (e * _size(p, best.denominator)) ** 2
                for e, p in zip(errs, probes, strict=True)
            )
        )
        best.k = _snap_noisy(best.k, se_k)
    return best


def _snap_noisy(k: float, se: float) -> float:
    """A mean's factor as a simple fraction (denominator up to 10) within 4 standard errors."""
    for den in range(1, 11):
        num = round(k * den)
        if num != 0 and abs(num / den - k) <= 4 * se:
            return num / den
    return k


def snap(k: float, tol: float) -> float:
    """``k`` as the simplest constant within ``4 * tol`` of it: a fraction with a small
    denominator, or one times or over log(2) or log(10) (a KL in bits or digits)."""
    best, best_cost = k, math.inf
    l2, l10 = math.log(2.0), math.log(10.0)
    for c, cost0 in ((1.0, 0), (l2, 10), (1 / l2, 10), (l10, 20), (1 / l10, 20)):
        frac = Fraction(k / c).limit_denominator(64)
        value = float(frac) * c
        if frac != 0 and abs(value - k) <= 4 * tol * abs(k):
            cost = cost0 + frac.denominator
            if cost < best_cost:
                best, best_cost = value, cost
    return best


_CONSTANTS = {"log(2)": math.log(2.0), "log(10)": math.log(10.0)}  # nats <-> bits, digits


def format_factor(k: float, denominator: Sequence[str]) -> str:
    """A Python expression in the shape symbols: ``"1"``, ``"1/D"``, ``"1/(2*B*D)"``, ``"4"``.

    A factor that is a simple fraction times ``log(2)`` or its inverse (a KL in bits) is
    written so.

    >>> format_factor(0.5, ("B", "D"))
    '1/(2*B*D)'
    >>> format_factor(4.0, ())
    '4'
    >>> format_factor(1 / math.log(2), ("B",))
    '1/(B*log(2))'
    """
    num, den_parts = _simple(k)
    consts: list[str] = []
    if num is None:
        for name, c in _CONSTANTS.items():
            num, den_parts = _simple(k * c)  # k = num / (den * c)
            if num is not None:
                consts = [name]
                break
            num, den_parts = _simple(k / c)  # k = num * c / den
            if num is not None:
                num = name if num == "1" else f"{num}*{name}"
                break
    if num is None:
        num, den_parts = f"{k:.6g}", []
    den_parts = [*den_parts, *denominator, *consts]
    if not den_parts:
        return num
    den = den_parts[0] if len(den_parts) == 1 else "(" + "*".join(den_parts) + ")"
    return f"{num}/{den}"


def _simple(k: float) -> tuple[str | None, list[str]]:
    """(numerator, [denominator]) when ``k`` is a fraction with a small denominator, to 1e-9."""
    frac = Fraction(k).limit_denominator(64)
    if frac == 0 or abs(float(frac) - k) > 1e-9 * abs(k):
        return None, []
    return str(frac.numerator), ([str(frac.denominator)] if frac.denominator != 1 else [])


def predict(probe: Probe, elements: np.ndarray, result: Fit) -> np.ndarray:
    """What a function with the fit ``result`` returns on ``probe`` (output's shape)."""
    kept = tuple(probe.axes.index(s) for s in result.kept if s in probe.axes)
    s = reduce_elements(probe, elements, kept)
    return (s * (result.k / _size(probe, result.denominator))).reshape(np.shape(probe.output))


def factor_value(factor: str, sizes: dict[str, int]) -> float:
    """Evaluate a factor expression at given sizes (``M`` included where it appears)."""
    names = {"log": math.log, **sizes}
    return float(eval(factor, {"__builtins__": {}}, names))  # our own strings only
