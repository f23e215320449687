"""The ``normal-sample`` kind: one-sample KL estimators that are given the sample (VITS).

The function sees one sample. Its expectation over the sample is computed
by Gauss-Hermite quadrature (exact for the usual quadratic estimators, and valid for any
function that adds up per-element terms), so that parametrizations, the sampled side and the
reduction are decided exactly as for closed forms; seeded draws then measure the spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._kl import kl as _exact_kl
from ..dists import Normal
from ..errors import KLDivError, bad
from ._fit import Fit, Probe
from ._report import Problem
from ._session import (
    SCALES,
    SHAPES_2D,
    SHAPES_3D,
    Abort,
    Hypothesis,
    Session,
    best_of,
    factor_suffix,
    interpret,
    name_notes,
    param_from_name,
    reading_text,
    std_from,
)

ROLES = ("sample", "sample@q", "sample@p", "q.loc", "q.scale", "p.loc", "p.scale", "mask")


def parse_roles(roles: Mapping[str, str] | str | None) -> dict[str, str]:
    """``"z=sample,ls=q.scale"`` or a mapping, checked: one sample, known roles, no repeats.

    >>> parse_roles("z_p=sample, logs_q=q.scale")
    {'z_p': 'sample', 'logs_q': 'q.scale'}
    """
    if roles is None:
        raise bad("roles", "a map from argument names to roles for kind 'normal-sample'", "None")
    if isinstance(roles, str):
        out: dict[str, str] = {}
        for item in roles.split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise bad("roles", "items of the form name=role", repr(item.strip()))
            name, role = (s.strip() for s in item.split("=", 1))
            out[name] = role
        roles = out
    roles = dict(roles)
    for name, role in roles.items():
        if role not in ROLES:
            raise bad(f"roles[{name!r}]", "one of " + ", ".join(ROLES), repr(role))
    used = [r.split("@")[0] for r in roles.values()]
    for role in set(used):
        if used.count(role) > 1:
            raise KLDivError(f"roles: the role {role!r} is given to more than one argument")
    if used.count("sample") != 1:
        raise bad("roles", "exactly one argument with the role 'sample'", repr(roles))
    if "q.scale" not in used and "p.scale" not in used:
        raise bad("roles", "a 'q.scale' or 'p.scale' argument", repr(roles))
    return roles


# ----------------------------------------------------------------------------------------------
# normal-sample
# ----------------------------------------------------------------------------------------------
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(16)
WEIGHTS = WEIGHTS / WEIGHTS.sum()
NODES_NEAR, WEIGHTS_NEAR = np.polynomial.hermite_e.hermegauss(8)  # reaches 3.8 sd, not 6.6
WEIGHTS_NEAR = WEIGHTS_NEAR / WEIGHTS_NEAR.sum()


def _expectation(session, params, mask, args_for, side, sigma) -> tuple[np.ndarray, str]:
    """E[fn] over the sample by Gauss-Hermite quadrature (exact for polynomials of degree 31).

    A function that overflows far in the tails (log of an exp that underflowed) is retried with
    8 nodes, still exact to degree 15.
    """
    for nodes, weights in ((NODES, WEIGHTS), (NODES_NEAR, WEIGHTS_NEAR)):
        mean_y, dtype = 0.0, "float64"
        try:
            for x, w in zip(nodes, weights, strict=True):
                z = params[f"{side}.loc"] + sigma * x
                call = session.call(args_for(params, mask, z), keywords=True)
                mean_y, dtype = mean_y + w * call.output, call.dtype
            return np.asarray(mean_y), dtype
        except Abort as exc:
            if exc.code != "nan" or nodes is NODES_NEAR:
                raise
    raise AssertionError("unreachable")


def _sigma(s: np.ndarray, param: str) -> np.ndarray:
    return std_from(param, s)


def audit_normal_sample(session: Session, roles: dict[str, str]) -> None:
    report, rng = session.report, session.rng
    by_role = {r.split("@")[0]: n for n, r in roles.items()}
    sample_role = next(r for r in roles.values() if r.startswith("sample"))
    # the sample comes from q (the approximate posterior, as in VI and VITS) unless pinned
    sides = [sample_role.split("@")[1]] if "@" in sample_role else ["q"]
    if "@" not in sample_role and "q.scale" not in by_role:
        sides = ["p"]
    sides = [s for s in sides if f"{s}.scale" in by_role]
    if not sides:
        raise KLDivError("roles: the sampled side needs a scale argument ('q.scale' or 'p.scale')")
    layouts = (
        [("B", "D", "T"), ("B", "T", "D")] if "mask" in by_role else [("B", "D"), ("B", "D", "T")]
    )
    last_error = None
    for axes in layouts:
        try:
            _audit_layout(session, roles, by_role, sides, axes, rng)
            return
        except Abort as exc:
            if exc.code != "raises":
                raise
            last_error = exc
            report.evidence.clear()
    assert last_error is not None
    raise last_error


def _audit_layout(session, roles, by_role, sides, axes, rng) -> None:
    report = session.report
    probes_in = []
    for shape in SHAPES_3D if len(axes) == 3 else SHAPES_2D:
        sizes = dict(zip(("B", "D", "T"), shape, strict=False))
        full = tuple(sizes[a] for a in axes)
        params = {
            "q.loc": rng.uniform(-1.0, 1.0, full),
            "q.scale": rng.uniform(0.4, 1.6, full),
            "p.loc": rng.uniform(-1.0, 1.0, full),
            "p.scale": rng.uniform(0.4, 1.6, full),
        }
        params = {k: session.round(v) for k, v in params.items()}
        mask = None
        if "mask" in by_role:
            mshape = tuple(1 if a == "D" else sizes[a] for a in axes)
            lengths = rng.integers(1, sizes["T"] + 1, sizes["B"])
            lengths[0] = sizes["T"]
            t_axis = axes.index("T")
            idx = np.arange(sizes["T"]).reshape([-1 if i == t_axis else 1 for i in range(3)])
            mask = (idx < lengths.reshape(-1, 1, 1)).astype(np.float64)
            mask = np.broadcast_to(mask, mshape).copy()
            sizes["M"] = int(mask.sum())
        probes_in.append((sizes, full, params, mask))

    def args_for(params, mask, z) -> dict[str, np.ndarray]:
        out = {}
        for name, role in roles.items():
            base = role.split("@")[0]
            if base == "sample":
                out[name] = session.round(z)
            elif base == "mask":
                out[name] = mask
            else:
                out[name] = params[base]
        return out

    hypotheses = []
    skipped: list[str] = []  # readings under which the function overflowed at every node set
    for side in sides:
        other = "p" if side == "q" else "q"
        for sp in SCALES:
            probes = []
            try:
                for sizes, _full, params, mask in probes_in:
                    sigma = _sigma(params[f"{side}.scale"], sp)
                    mean_y, dtype = _expectation(session, params, mask, args_for, side, sigma)
                    probes.append(Probe(axes, sizes, mean_y, _tol(dtype), mask))
            except Abort as exc:
                if exc.code != "nan":
                    raise
                skipped.append(f"{side}.scale as {sp}")
                continue
            other_params = SCALES if f"{other}.scale" in by_role else (None,)
            for op in other_params:
                elements = []
                for _sizes, _full, params, _mask in probes_in:
                    x_dist = Normal(params[f"{side}.loc"], std=_sigma(params[f"{side}.scale"], sp))
                    loc = params[f"{other}.loc"]
                    if f"{other}.loc" not in by_role:
                        loc = np.zeros_like(loc)
                    if op is None:
                        y_dist = Normal(loc, std=np.ones_like(loc))
                    else:
                        y_dist = Normal(loc, std=_sigma(params[f"{other}.scale"], op))
                    elements.append(np.asarray(_exact_kl(x_dist, y_dist)))
                named = {by_role[f"{side}.scale"]: sp}
                if op is not None:
                    named[by_role[f"{other}.scale"]] = op
                hypotheses.append(
                    Hypothesis(f"{side}||{other}", named, f"{side}||{other}", probes, elements)
                )
    if not hypotheses:
        raise Abort("nan", "the function returned NaN or inf for samples under every reading")
    if skipped:
        report.notes.append(
            "it overflows (inf or NaN) for samples a few standard deviations out under the "
            "readings " + ", ".join(skipped) + " (log of an underflowed density?)"
        )
    best, closest = best_of(hypotheses)
    example = ("B", "T") if "T" in axes else ("B",)
    if best is None:  # no exact reading: the usual one (sample from q, as in VI) unless pinned
        # and both scales in one parametrization, as code almost always has them
        # and the parametrization the argument names say, if they say one (the values cannot)
        preferred = [
            h
            for h in hypotheses
            if h.direction == f"{sides[0]}||{_other(sides[0])}"
            and all(param_from_name(n) in (None, v) for n, v in h.params.items())
        ]
        den = _denominator_by_duplication(session, probes_in[0], args_for, axes, "mask" in by_role)
        closest = _closest_at_unit_factor(preferred, "mask" in by_role, den) or closest
        if closest is not None and any(param_from_name(n) for n in closest.params):
            report.notes.append(
                "no reading fits its expectation exactly, so the parametrization shown is the one "
                "its argument names suggest"
            )
    chosen = best or closest
    if chosen is None:
        report.verdict = "not-kl"
        report.summary = "its output shape matches no reduction of the inputs"
        return
    report.params = dict(chosen.params)
    name_notes(report)
    report.direction = chosen.direction
    result = chosen.result
    has_mask = "mask" in by_role
    reduction, factor, notes = interpret(result, example, ("D",), mask=has_mask)
    report.reduction = reduction
    report.notes.extend(notes)
    side = chosen.direction.split("||")[0]
    sd, mean_draw = _spread(session, probes_in[0], args_for, side, chosen)
    report.std = sd
    exact0 = _reduced_value(chosen, 0, result)
    quad0 = float(np.sum(chosen.probes[0].output))
    report.evidence.append(
        f"expectation over the sample by {len(NODES)}-point Gauss-Hermite quadrature on "
        f"{len(SHAPES_3D)} shapes ({'x'.join(axes)}{', masked' if has_mask else ''}); "
        f"64 seeded draws at the first: mean {mean_draw:.4g} ± {sd / 8:.2g}, "
        f"quadrature {quad0:.4g}, exact KL {exact0:.4g}"
    )
    if best is not None:
        report.factor = factor
        if result.k < 0:
            report.verdict = "not-kl"
            report.bias = quad0 - exact0 / result.k  # against the KL itself
            report.problems.append(
                Problem(
                    "negative", f"its expectation is {factor} times the KL: the sign is flipped"
                )
            )
            report.summary = f"estimates KL({side} || {_other(side)}) times {factor}"
        elif factor == "1":
            report.verdict = "unbiased-estimator"
            report.bias = 0.0
            report.summary = f"an unbiased one-sample estimate of KL({side} || {_other(side)})"
        else:  # an unbiased estimator of a scaled KL, as exact-scaled is for closed forms
            report.verdict = "unbiased-estimator"
            report.bias = 0.0
            report.problems.append(Problem("scaled", f"its expectation is the KL times {factor}"))
            report.summary = (
                f"an unbiased one-sample estimate of KL({side} || {_other(side)}) times {factor}"
            )
    else:
        bias = quad0 - exact0
        report.bias = bias
        report.closest = f"KL with {reading_text(chosen)} (off by {result.error:.2g} relative)"
        rel = abs(bias) / max(abs(exact0), 1e-12)
        report.verdict = "biased-estimator" if rel < 5.0 else "not-kl"
        report.summary = (
            f"its expectation is not KL({side} || {_other(side)}): bias {bias:+.4g} at the "
            "first probe"
        )
        report.problems.append(
            Problem("biased", f"its expected value differs from the KL by {bias:+.4g} ({rel:.0%})")
        )
    if best is not None:
        report.equivalent = _sample_equivalent(roles, by_role, chosen, reduction, factor, axes)
        missing = [s for s in (side,) if f"{s}.loc" not in by_role]
        for s in missing:
            report.notes.append(
                f"m_{s} in the equivalent is the {s} side's mean, which the function does not take "
                "(the sample carries it)"
            )


def _denominator_by_duplication(session, probe_in, args_for, axes, has_mask):
    """Which symbols divide the output, read off by repeating the inputs along each axis.

    A sum doubles when an axis is repeated; a mean over it does not. This holds whatever the
    per-element terms are, so it tells the reduction of a biased function too.
    """
    _sizes, _full, params, mask = probe_in
    z = params["q.loc"] + session.rng.standard_normal(np.shape(params["q.loc"]))
    base = float(np.sum(session.call(args_for(params, mask, z), keywords=True).output))
    den = []
    for sym in axes:
        i = axes.index(sym)
        rep = {k: np.concatenate([v, v], axis=i) for k, v in params.items()}
        rep_mask = (
            None if mask is None else (mask if sym == "D" else np.concatenate([mask, mask], axis=i))
        )
        out = session.call(args_for(rep, rep_mask, np.concatenate([z, z], axis=i)), keywords=True)
        ratio = float(np.sum(out.output)) / base if base else math.nan
        if abs(ratio - 1.0) < 1e-3:
            den.append(sym)
    if has_mask and "B" in den and "T" in den:
        den = [s for s in den if s not in ("B", "T")] + ["M"]
    return tuple(den)


def _closest_at_unit_factor(
    hypotheses: list[Hypothesis], has_mask: bool, denominator: tuple[str, ...] | None = None
) -> Hypothesis | None:
    """The reading whose plain reduction (factor 1) is nearest the outputs; sets its fit."""

    best, best_err = None, math.inf
    dens = (
        [denominator]
        if denominator is not None
        else [(), ("M",) if has_mask else ("B", "T"), ("B",)]
    )
    for h in hypotheses:
        if h.result is None:
            continue
        kept = h.result.kept
        for den in dens:
            err = 0.0
            for probe, e in zip(h.probes, h.elements, strict=True):
                el = np.broadcast_to(e, probe.shape)
                if probe.mask is not None:
                    el = np.where(np.broadcast_to(probe.mask, probe.shape) > 0, el, 0.0)
                want = float(np.sum(el)) / math.prod(probe.sizes[s] for s in den)
                err = max(err, abs(float(np.sum(probe.output)) - want) / max(abs(want), 1e-300))
            if err < best_err:
                best_err = err
                best = h
                h.result = Fit(kept, den, 1.0, err, False)
    return best


def _other(side: str) -> str:
    return "p" if side == "q" else "q"


def _tol(dtype: str) -> float:
    from ._fit import tolerance

    return tolerance(dtype)


def _reduced_value(h: Hypothesis, i: int, result: Any) -> float:
    probe = h.probes[i]
    e = np.broadcast_to(h.elements[i], probe.shape)
    if probe.mask is not None:
        e = np.where(np.broadcast_to(probe.mask, probe.shape) > 0, e, 0.0)
    n = math.prod(probe.sizes[s] for s in result.denominator)
    return float(np.sum(e)) * result.k / n


def _spread(session, probe_in, args_for, side, chosen) -> tuple[float, float]:
    _sizes, _full, params, mask = probe_in
    sp = next(iter(chosen.params.values()))  # the sampled side's scale comes first
    sigma = _sigma(params[f"{side}.scale"], sp)
    values = []
    for _ in range(64):
        z = params[f"{side}.loc"] + sigma * session.rng.standard_normal(sigma.shape)
        values.append(float(np.sum(session.call(args_for(params, mask, z), keywords=True).output)))
    v = np.asarray(values)
    return float(v.std(ddof=1)), float(v.mean())


def _sample_equivalent(roles, by_role, h, reduction, factor, axes) -> str:
    sampled = h.direction.split("||")[0]

    def spec(side: str) -> str:
        # a sampled side without a loc argument: its mean is in the sample; the other side's is 0
        loc = by_role.get(f"{side}.loc", f"m_{side}" if side == sampled else "0.0")
        scale = by_role.get(f"{side}.scale")
        if scale is None:
            return f"kldiv.Normal({loc}, std=1.0)"
        return f"kldiv.Normal({loc}, {h.params[scale]}={scale})"

    side = h.direction.split("||")[0]
    event = axes.index("D") if len(axes) == 3 else -1
    mask = f", mask={by_role['mask']}" if "mask" in by_role else ""
    red = "" if reduction == "none" else f', reduction="{reduction}"'
    return (
        f"kldiv.kl({spec(side)}, {spec(_other(side))}, event_axis={event}{mask}{red})"
        f"{factor_suffix(factor)}  (exact: no sampling needed when both sides are Gaussian)"
    )
