"""The five kinds of function the auditor knows, and how each is probed.

Every kind follows the same plan: make probes whose exact answer kldiv knows (NumPy float64,
through :func:`kldiv.kl`), call the function on them, and let :mod:`._fit` decide which
hypothesis (parametrization, direction, class axis, temperature) and which reduction explains
the outputs. Estimator kinds add a stochastic part: expectations by Gauss-Hermite quadrature
(normal-sample) or by structured probes (log-ratio), then seeded sampling for bias and spread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._kl import kl as _exact_kl
from ..dists import Categorical, Normal
from ._call import AuditTimeout, Call, Caller, autograd
from ._fit import Fit, Probe, fit, format_factor, tolerance
from ._report import AuditReport, Problem

SCALES = ("std", "var", "log_std", "log_var")
SPACES = ("probs", "log_probs", "logits")
SHAPES_2D = ((3, 5), (4, 2), (6, 3), (2, 7))
SHAPES_3D = ((2, 3, 5), (3, 4, 2), (4, 2, 6), (5, 3, 4))

#: what a kind's symbols mean, for the reports
SYMBOLS = {
    "B": "batch size",
    "D": "latent size",
    "C": "number of classes",
    "T": "sequence length",
    "M": "number of valid (unmasked) positions",
}


class Abort(Exception):
    """Stop probing: the function cannot be audited further (the reason goes in the report)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Hypothesis:
    """One reading of the function: what its arguments mean and what it should return."""

    label: str
    params: dict[str, str]
    direction: str | None
    probes: list[Probe]
    elements: list[np.ndarray]
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    result: Fit | None = None


# ----------------------------------------------------------------------------------------------
# shared machinery
# ----------------------------------------------------------------------------------------------
class Session:
    """State of one audit: the caller, the seeded generator, the report being filled."""

    def __init__(
        self, caller: Caller, report: AuditReport, names: list[str], seed: int, deadline: float
    ):
        self.caller = caller
        self.report = report
        self.names = names
        self.rng = np.random.default_rng(seed)
        self.deadline = deadline
        self.final_probes: list[Probe] = []  # the probes of the reading reported
        self.succeeded = 0  # calls that returned; failures before the first mean "wrong backend"
        self.mask_name: str | None = None
        self.nonfinite_seen = False

    def call(self, args: dict[str, np.ndarray], *, keywords: bool = False) -> Call:
        if time.perf_counter() > self.deadline:
            raise Abort("timeout", "the audit ran out of time before the probes were done")
        try:
            call = self.caller(args, keywords=keywords)
        except AuditTimeout as exc:
            raise Abort("timeout", f"the function did not return in time ({exc})") from None
        if call.error is not None:
            code = "wrong-backend" if self.succeeded == 0 else "raises"
            raise Abort(code, f"the function failed on a valid probe: {call.error}")
        self.succeeded += 1
        assert call.output is not None
        if not np.all(np.isfinite(call.output)):
            self.nonfinite_seen = True
            raise Abort("nan", "the function returned NaN or inf on finite, valid inputs")
        return call

    def round(self, x: np.ndarray) -> np.ndarray:
        return self.caller.backend.round(x)

    def probe(self, call: Call, axes: tuple[str, ...], sizes: dict[str, int], mask: Any = None):
        return Probe(axes, dict(sizes), call.output, tolerance(call.dtype), mask)


def best_of(hypotheses: Sequence[Hypothesis]) -> tuple[Hypothesis | None, Hypothesis | None]:
    """(the best hypothesis that fits, the closest one overall)."""
    for h in hypotheses:
        h.result = fit(h.probes, h.elements)
    scored = [h for h in hypotheses if h.result is not None]
    # ties (a function of probabilities reads the same on either class axis) go to the last axis
    fitting = sorted(
        (h for h in scored if h.result.ok),
        key=lambda h: (h.extra.get("axis", -1) != -1, h.result.error),
    )
    closest = min(
        scored,
        key=lambda h: h.result.error * (1.0 + 1e-6 * (h.extra.get("axis", -1) != -1)),
        default=None,
    )
    return (fitting[0] if fitting else None), closest


def interpret(
    result: Fit, example: Sequence[str], event: Sequence[str], mask: bool
) -> tuple[str, str, list[str]]:
    """kldiv's (reduction, factor, notes) for a fit of KL elements."""
    kept, den = set(result.kept), list(result.denominator)
    notes: list[str] = []
    count = ["M"] if mask else list(example)
    if set(example) <= kept or (mask and set(example) & kept):
        reduction = "none"
        rest = den
    elif set(count) <= set(den):
        reduction = "mean"
        rest = [s for s in den if s not in count]
    elif "B" in den and "B" in example:
        reduction = "batchmean"
        rest = [s for s in den if s != "B"]
    else:
        reduction = "sum"
        rest = den
    factor = format_factor(result.k, rest)
    for s in rest:
        if s in event:
            notes.append(f"divides by {s} ({SYMBOLS[s]}): a mean over the event axis, not a sum")
        elif s in ("B", "M"):
            notes.append(f"divides by {s} ({SYMBOLS[s]}) on top of the reduction")
    return reduction, factor, notes


def verdict_for(k: float, factor: str) -> str:
    if k <= 0:
        return "not-kl"
    return "exact" if factor == "1" else "exact-scaled"


def factor_suffix(factor: str) -> str:
    return "" if factor == "1" else f" * ({factor})"


def check_gradients(
    session: Session,
    args: dict[str, np.ndarray],
    reference: Callable[[dict[str, Any]], Any],
    *,
    keywords: bool = False,
    sample_names: Sequence[str] = (),
    normals: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] | None = None,
) -> None:
    """Compare the function's autograd gradients with those of the exact reference."""
    caller = session.caller
    backend = caller.backend
    if backend.name == "numpy":
        return
    out = session.call(args, keywords=keywords).output
    weights = session.rng.uniform(0.5, 1.5, size=np.shape(out))
    try:
        got = caller.gradients(args, weights, keywords=keywords)
    except Exception as exc:  # the user's function under autograd
        session.report.problems.append(
            Problem("gradient-fails", f"autograd through the function fails: {exc}")
        )
        return
    want = autograd(backend, reference, args, weights)
    worst, where = 0.0, None
    for name in args:
        if name in sample_names:
            continue
        g, w = got[name], want[name]
        if normals and name in normals:  # constrained inputs: compare along the constraint
            normal, axis = normals[name]
            g, w = (_tangent(v, normal(args[name]), axis) for v in (g, w))
        if not np.all(np.isfinite(g)):
            session.report.problems.append(
                Problem("gradient-nan", f"the gradient with respect to {name} is not finite")
            )
            return
        scale = max(float(np.max(np.abs(w))), 1e-12)
        err = float(np.max(np.abs(g - w))) / scale
        if err > worst:
            worst, where = err, name
    tol = 1e-6 if backend.dtype_name == "float64" else 2e-3
    if worst > tol:
        session.report.problems.append(
            Problem(
                "gradient-wrong",
                f"its gradient with respect to {where} differs from the exact KL's "
                f"(relative error {worst:.2g}) although the values agree",
            )
        )
    else:
        session.report.evidence.append(
            f"{backend.name} autograd gradients match the exact KL's (relative error {worst:.1g})"
        )


def _tangent(g: np.ndarray, n: np.ndarray, axis: int) -> np.ndarray:
    """``g`` without its component along the normal ``n`` (per distribution on ``axis``)."""
    return g - n * np.sum(g * n, axis=axis, keepdims=True) / np.sum(n * n, axis=axis, keepdims=True)


def reduce_like(elements: Any, probe: Probe, result: Fit) -> Any:
    """Apply a fit's reduction to backend-native elements (for gradient references)."""
    from .._xp import xp_of

    xp = xp_of(elements)
    e = elements
    if probe.mask is not None:
        m = xp.asarray(np.broadcast_to(probe.mask, probe.shape).astype(np.float64), dtype=e.dtype)
        e = e * m
    kept = [probe.axes.index(s) for s in result.kept]
    reduced = tuple(i for i in range(len(probe.shape)) if i not in kept)
    s = xp.sum(e, axis=reduced) if reduced else e
    remaining = sorted(kept)
    if kept:
        s = xp.permute_dims(s, tuple(remaining.index(a) for a in kept))
    n = math.prod(probe.sizes[sym] for sym in result.denominator)
    return s * (result.k / n)


def record_problems(session: Session, report: AuditReport) -> None:
    """Problems every kind checks: mutation, negative values; warnings the function raised."""
    for text in list(session.caller.warnings)[:3]:
        report.notes.append(f"it warns: {' '.join(text.split())[:200]}")
    for name in sorted(session.caller.mutated):
        report.problems.insert(
            0,
            Problem(
                "mutates-input",
                f"it modifies its input {name} in place (a caller's tensor is changed, and a "
                "later use of it reads different numbers)",
            ),
        )
    probes = session.final_probes
    if probes and report.verdict == "not-kl":  # exact readings are >= 0 by the fit itself
        low = min(float(np.min(p.output)) for p in probes)
        if low < -1e-6:
            report.problems.append(
                Problem("negative", f"it returns negative values (as low as {low:.3g})")
            )


# ----------------------------------------------------------------------------------------------
# normal-standard and normal
# ----------------------------------------------------------------------------------------------
def _normal(loc: np.ndarray, s: np.ndarray, param: str) -> Normal:
    return Normal(loc, **{param: s})


def _unit_value(param: str) -> float:
    return 1.0 if param in ("std", "var") else 0.0


def audit_normal(session: Session, two_sided: bool) -> None:
    report, names = session.report, session.names
    rng = session.rng
    raw: list[dict[str, np.ndarray]] = []
    probes: list[Probe] = []
    for b, d in SHAPES_2D:
        args: dict[str, np.ndarray] = {}
        sides = ("a", "b") if two_sided else ("a",)
        for i, _side in enumerate(sides):
            args[names[2 * i]] = session.round(rng.uniform(-1.5, 1.5, (b, d)))
            args[names[2 * i + 1]] = session.round(rng.uniform(0.4, 2.0, (b, d)))
        call = session.call(args)
        raw.append(args)
        probes.append(session.probe(call, ("B", "D"), {"B": b, "D": d}))

    hypotheses = []
    combos = (
        [(pa, pb, d) for pa in SCALES for pb in SCALES for d in ("a||b", "b||a")]
        if two_sided
        else [(pa, None, "a||b") for pa in SCALES]
    )
    for pa, pb, direction in combos:
        elements = []
        for args in raw:
            vals = list(args.values())
            a = _normal(vals[0], vals[1], pa)
            b = _normal(vals[2], vals[3], pb) if two_sided else Normal.standard()
            first, second = (a, b) if direction == "a||b" else (b, a)
            elements.append(np.asarray(_exact_kl(first, second)))
        params = {names[1]: pa} | ({names[3]: pb} if two_sided else {})
        shown = direction if two_sided else None
        hypotheses.append(Hypothesis(f"{pa}/{pb}/{direction}", params, shown, probes, elements))
    # alternatives that are not KL, for "closest"
    alternatives = []
    if two_sided:
        for pa in SCALES:
            elements = []
            for args in raw:
                vals = list(args.values())
                a, b = _normal(vals[0], vals[1], pa), _normal(vals[2], vals[3], pa)
                elements.append(np.asarray(_exact_kl(a, b)) + np.asarray(_exact_kl(b, a)))
            alternatives.append(
                Hypothesis(
                    f"the symmetric KL(a||b) + KL(b||a) with scales as {pa}",
                    {names[1]: pa, names[3]: pa},
                    None,
                    probes,
                    elements,
                )
            )
    best, closest = best_of(hypotheses)
    if best is None:
        alt, alt_closest = best_of(alternatives)
        _not_kl(session, alt, closest, alt_closest, ("B",), ("D",))
        _check_at_equality_normal(session, closest, two_sided)
        return
    result = best.result
    assert result is not None
    report.params = best.params
    report.direction = best.direction if two_sided else None
    reduction, factor, notes = interpret(result, ("B",), ("D",), mask=False)
    report.reduction, report.factor = reduction, factor
    report.notes.extend(notes)
    report.verdict = verdict_for(result.k, factor)
    if "D" in result.kept and "B" not in result.kept:
        session.final_probes = list(best.probes)
        report.verdict = "not-kl"
        report.closest = "the KL per latent dimension, summed over the batch"
        report.summary = "returns one number per latent dimension, summed over the batch: no KL"
        report.reduction = report.factor = report.equivalent = None
        return
    if "D" in result.kept:  # per-dimension terms: the KL is their sum over the latent axis
        session.final_probes = list(best.probes)
        report.verdict = "not-kl"
        report.closest = "the per-dimension KL terms (their sum over the latent axis is the KL)"
        report.summary = (
            "returns one KL term per latent dimension, not summed over the latent axis; the "
            "equivalent below gives the same terms"
        )
    event = "" if "D" in result.kept else ", event_axis=-1"
    red = "" if reduction == "none" else f', reduction="{reduction}"'
    loc_a, s_a = names[0], names[1]
    p_spec = f"kldiv.Normal({loc_a}, {best.params[s_a]}={s_a})"
    if two_sided:
        loc_b, s_b = names[2], names[3]
        q_spec = f"kldiv.Normal({loc_b}, {best.params[s_b]}={s_b})"
        if best.direction == "b||a":
            p_spec, q_spec = q_spec, p_spec
    else:
        q_spec = "kldiv.Normal.standard()"
    report.equivalent = f"kldiv.kl({p_spec}, {q_spec}{event}{red}){factor_suffix(factor)}"
    if report.verdict != "not-kl":
        report.summary = _summary_exact(report)
    report.evidence.append(
        f"{len(probes)} probes of shapes {', '.join(f'{b}x{d}' for b, d in SHAPES_2D)} (B x D): "
        f"every output equals the exact KL with this reading to {result.error:.1g} relative"
    )
    _runner_up_evidence(report, hypotheses, best)
    ref_param = best.params

    def reference(natives: dict[str, Any]) -> Any:
        vals = list(natives.values())
        a = Normal(vals[0], **{ref_param[names[1]]: vals[1]})
        if two_sided:
            b = Normal(vals[2], **{ref_param[names[3]]: vals[3]})
        else:
            b = Normal.standard()
        first, second = (a, b) if best.direction in ("a||b", None) else (b, a)
        return reduce_like(_exact_kl(first, second), probes[0], result)

    check_gradients(session, raw[0], reference)


def _check_at_equality_normal(session: Session, h: Hypothesis | None, two_sided: bool) -> None:
    if h is None:
        return
    names = session.names
    b, d = SHAPES_2D[0]
    pa = h.params[names[1]]
    args = {names[0]: np.zeros((b, d)), names[1]: np.full((b, d), _unit_value(pa))}
    if two_sided:
        pb = h.params.get(names[3], pa)
        args[names[2]] = np.zeros((b, d))
        args[names[3]] = np.full((b, d), _unit_value(pb))
    try:
        out = session.call(args).output
    except Abort:
        return
    if float(np.max(np.abs(out))) > 1e-6:
        session.report.problems.append(
            Problem(
                "nonzero-at-equality",
                f"it returns {float(np.sum(out)):.4g} (summed) for two identical distributions "
                f"(reading the scale as {pa}), where KL is 0",
            )
        )


def _summary_exact(report: AuditReport) -> str:
    if report.verdict == "exact":
        return "computes the KL divergence exactly"
    return f"computes the KL divergence times {report.factor}"


def _runner_up_evidence(report: AuditReport, hypotheses: Sequence[Hypothesis], best) -> None:
    others = [h for h in hypotheses if h is not best and h.result is not None]
    if others:
        second = min(others, key=lambda h: h.result.error)
        report.evidence.append(
            f"the next best reading ({_reading(second) or second.label}) is off by "
            f"{second.result.error:.2g} relative"
        )


def _not_kl(
    session: Session,
    alternative: Hypothesis | None,
    closest: Hypothesis | None,
    alt_closest: Hypothesis | None,
    example: Sequence[str],
    event: Sequence[str],
) -> None:
    report = session.report
    report.verdict = "not-kl"
    chosen = alternative if alternative is not None else closest
    session.final_probes = list(chosen.probes) if chosen is not None else []
    if alternative is not None and alternative.result is not None:
        r = alternative.result
        reduction, factor, _ = interpret(r, example, event, mask=False)
        report.closest = alternative.label
        report.params = dict(alternative.params)
        report.reduction, report.factor = reduction, factor
        report.summary = f"computes {alternative.label}, not a KL divergence"
        report.evidence.append(f"it equals {alternative.label} to {r.error:.1g} relative")
        return
    if closest is not None and closest.result is not None:
        report.closest = f"KL with {_reading(closest)} (off by {closest.result.error:.2g} relative)"
        report.summary = "matches no KL reading of its arguments"
        report.evidence.append(
            f"no parametrization, direction or reduction reproduces its outputs; the closest is "
            f"{_reading(closest)}, off by {closest.result.error:.2g} relative"
        )
    else:
        report.summary = "its output shape matches no reduction of the inputs"


def _reading(h: Hypothesis) -> str:
    parts = [f"{k} as {v}" for k, v in h.params.items()]
    if h.direction:
        parts.append(f"direction {h.direction}")
    if h.temperature not in (None, 1.0):
        parts.append(f"temperature {h.temperature:g}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# categorical
# ----------------------------------------------------------------------------------------------
def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def _encode(logp: np.ndarray, space: str, axis: int, rng: np.random.Generator) -> np.ndarray:
    if space == "probs":
        return np.exp(logp)
    if space == "log_probs":
        return logp
    shape = list(logp.shape)
    shape[axis] = 1
    return logp + rng.uniform(-2.0, 2.0, shape)


def _decode(x: np.ndarray, space: str, axis: int) -> np.ndarray:
    """The log-probabilities the function should read from what it was given."""
    if space == "probs":
        with np.errstate(divide="ignore"):
            return np.log(x)
    if space == "log_probs":
        return x
    return _log_softmax(x, axis)


def _pointwise(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    p = np.exp(logp)
    return np.where(p > 0, p * (logp - logq), 0.0)


def audit_categorical(session: Session) -> None:
    report, names = session.report, session.names
    rng = session.rng
    a_name, b_name = names[0], names[1]
    hypotheses: list[Hypothesis] = []
    alternatives: list[Hypothesis] = []
    logits_runs: dict[tuple, list[tuple[np.ndarray, np.ndarray, Probe]]] = {}
    failures: list[tuple[str, str]] = []  # (code, message) of encodings the function rejected
    layouts = [
        (-1, SHAPES_2D, ("B", "C")),
        (0, SHAPES_2D, ("C", "B")),
        (-1, SHAPES_3D, ("B", "T", "C")),  # tried only if no 2-D probe ran: (B, T, V) code
    ]
    for axis, shapes, axes in layouts:
        if len(axes) == 3 and hypotheses:
            break
        example = tuple(a for a in axes if a != "C")
        base = []
        for shape in shapes:
            la = _log_softmax(rng.normal(0.0, 1.3, shape), axis)
            lb = _log_softmax(rng.normal(0.0, 1.3, shape), axis)
            base.append((la, lb, shape))
        encodings = [("logits", "logits")] + [
            (sa, sb) for sa in SPACES for sb in SPACES if (sa, sb) != ("logits", "logits")
        ]
        for sa, sb in encodings:
            if True:
                probes, decoded = [], []
                try:
                    for la, lb, shape in base:
                        xa = session.round(_encode(la, sa, axis, rng))
                        xb = session.round(_encode(lb, sb, axis, rng))
                        call = session.call({a_name: xa, b_name: xb})
                        sizes = dict(zip(axes, shape, strict=True))
                        probe = session.probe(call, axes, sizes)
                        probes.append(probe)
                        decoded.append((_decode(xa, sa, axis), _decode(xb, sb, axis), xa, xb))
                        if sa == sb == "logits":
                            logits_runs.setdefault((axis, axes), []).append((xa, xb, probe))
                except Abort as exc:
                    if exc.code == "wrong-backend" and len(axes) == 3:
                        raise  # nothing ran in any layout: let the next backend try
                    if exc.code not in ("raises", "nan", "wrong-backend"):
                        raise
                    failures.append((exc.code, f"{sa}/{sb}: {exc.message}"))
                    continue
                params = {a_name: sa, b_name: sb}
                for direction in ("a||b", "b||a"):
                    elements = [
                        _pointwise(pa, pb) if direction == "a||b" else _pointwise(pb, pa)
                        for pa, pb, _, _ in decoded
                    ]
                    h = Hypothesis(
                        f"{sa}/{sb}/{direction}/axis {axis}",
                        params,
                        direction,
                        probes,
                        elements,
                        extra={"axis": axis, "example": example},
                    )
                    hypotheses.append(h)
                alternatives.extend(
                    _categorical_alternatives(params, probes, decoded, axis, example)
                )
    if not hypotheses:
        if not failures:
            raise Abort("raises", "no probe ran")
        code, message = failures[0]
        raise Abort("nan" if code == "nan" else "raises", message.split(": ", 1)[1])
    best, closest = best_of(hypotheses)
    if best is None:  # a temperature inside the function?
        best = _temperature_search(logits_runs, a_name, b_name)
        if best is not None:
            hypotheses.append(best)
    if best is None:
        alt, alt_closest = best_of(alternatives)
        if alt is not None:
            alt = _most_general(alternatives, alt, same_label=True)
        example = (alt or closest).extra.get("example", ("B",)) if (alt or closest) else ("B",)
        _not_kl(session, alt, closest, alt_closest, example, ("C",))
        return
    # several spaces may fit (a logits function also takes log-probs): report the most general
    best = _most_general(hypotheses, best, same_label=False)
    result = best.result
    assert result is not None
    axis = best.extra["axis"]
    report.params = dict(best.params)
    report.direction = best.direction
    report.temperature = best.temperature
    report.class_axis = axis
    for name, space in best.params.items():
        lowered = name.lower()
        if space != "probs" and "prob" in lowered and "log" not in lowered:
            report.problems.append(
                Problem(
                    "name-says-probs",
                    f"{name} is read as {space.replace('_', '-')}, though its name says "
                    "probabilities: passing probabilities there computes no KL (F.kl_div's "
                    "first argument takes log-probabilities)",
                )
            )
    if "C" in result.kept:
        session.final_probes = list(best.probes)
        report.verdict = "not-kl"
        report.reduction = "none"
        report.closest = "the per-class terms p·log(p/q) of the KL"
        report.summary = (
            "returns the per-class terms of the KL, not summed over the classes (sum over the "
            "class axis to get the KL)"
        )
        report.evidence.append(f"its output keeps the class axis ({'last' if axis == -1 else 0})")
        return
    reduction, factor, notes = interpret(result, best.extra["example"], ("C",), mask=False)
    report.reduction, report.factor = reduction, factor
    report.notes.extend(notes)
    report.verdict = verdict_for(result.k, factor)
    if best.temperature is not None:
        t2 = best.temperature**2
        note = f"softens both sides with temperature {best.temperature:g}"
        if abs(result.k - t2) <= 1e-3 * t2:
            note += " and multiplies by T² (Hinton's convention)"
        report.notes.append(note)
    if axis == 0:
        report.notes.append(
            "the classes are on axis 0 (each column is a distribution): a 'batch' mean over "
            "axis 0 divides by the number of classes"
        )
    spec_axis = ", axis=0" if axis == 0 else ""
    t = best.temperature

    def spec(name: str) -> str:
        space = best.params[name]
        arg = name if t is None else f"{name} / {t:g}"
        return f"kldiv.Categorical({space}={arg}{spec_axis})"

    p_spec, q_spec = spec(a_name), spec(b_name)
    if best.direction == "b||a":
        p_spec, q_spec = q_spec, p_spec
    red = "" if reduction == "none" else f', reduction="{reduction}"'
    report.equivalent = f"kldiv.kl({p_spec}, {q_spec}{red}){factor_suffix(factor)}"
    report.summary = _summary_exact(report)
    report.evidence.append(
        f"{(len(result.kept) and 'per-distribution') or 'scalar'} outputs on {len(SHAPES_2D)} "
        f"shapes, classes on axis {axis}: equal to the exact KL with this reading to "
        f"{result.error:.1g} relative"
    )
    _runner_up_evidence(report, [h for h in hypotheses if h.params != best.params], best)
    if failures:
        report.notes.append(
            "it rejects other input spaces: " + "; ".join(m for _, m in failures[:2])
        )
    if session.caller.backend.name != "numpy" and best.temperature is None:
        sa, sb = best.params[a_name], best.params[b_name]
        shape0, axes0 = best.probes[0].shape, best.probes[0].axes
        la = _log_softmax(rng.normal(0.0, 1.3, shape0), axis)
        lb = _log_softmax(rng.normal(0.0, 1.3, shape0), axis)
        args = {
            a_name: session.round(_encode(la, sa, axis, rng)),
            b_name: session.round(_encode(lb, sb, axis, rng)),
        }

        def reference(natives: dict[str, Any]) -> Any:
            ca = Categorical(**{sa: natives[a_name]}, axis=axis)
            cb = Categorical(**{sb: natives[b_name]}, axis=axis)
            first, second = (ca, cb) if best.direction == "a||b" else (cb, ca)
            values = _exact_kl(first, second, reduction="none" if result.kept else "sum")
            sizes = dict(zip(axes0, shape0, strict=True))
            return values * (result.k / math.prod(sizes[s] for s in result.denominator))

        # probabilities and log-probabilities are constrained to the simplex: gradients are
        # compared on it (F.kl_div's and kldiv's differ by a multiple of the constraint normal)
        normals = {}
        for name, space in ((a_name, sa), (b_name, sb)):
            if space == "probs":
                normals[name] = (np.ones_like, axis)
            elif space == "log_probs":
                normals[name] = (np.exp, axis)
        check_gradients(session, args, reference, normals=normals)


_SPACE_RANK = {"probs": 0, "log_probs": 1, "logits": 2}


def _most_general(hypotheses: Sequence[Hypothesis], best: Hypothesis, *, same_label: bool):
    """Among readings that fit like ``best``, the one with the most general input spaces."""
    same = [
        h
        for h in hypotheses
        if h.result is not None
        and h.result.ok
        and h.direction == best.direction
        and h.extra.get("axis") == best.extra.get("axis")
        and (not same_label or h.label == best.label)
    ]
    return max(
        same or [best],
        key=lambda h: (sum(_SPACE_RANK.get(v, 0) for v in h.params.values()), -h.result.error),
    )


def _categorical_alternatives(params, probes, decoded, axis, example) -> list[Hypothesis]:
    out = []
    named = {
        "the cross-entropy H(a, b) = -Σ a·log b": lambda pa, pb: -np.exp(pa) * pb,
        "the cross-entropy H(b, a) = -Σ b·log a": lambda pa, pb: -np.exp(pb) * pa,
        "the symmetric KL(a||b) + KL(b||a)": lambda pa, pb: _pointwise(pa, pb) + _pointwise(pb, pa),
        "the Jensen-Shannon divergence JS(a, b)": _jsd_terms,
    }
    for label, f in named.items():
        out.append(
            Hypothesis(
                label,
                params,
                None,
                probes,
                [f(pa, pb) for pa, pb, _, _ in decoded],
                extra={"axis": axis, "example": example},
            )
        )
    # F.kl_div(input, target) computes target * (log target - input): given probabilities as
    # its input (softmax where log_softmax belongs), it is no KL. Either argument may be it.
    for label, f in (
        ("b·(log b - p_a)", lambda pa, pb: np.exp(pb) * (pb - np.exp(pa))),
        ("a·(log a - p_b)", lambda pa, pb: np.exp(pa) * (pa - np.exp(pb))),
    ):
        out.append(
            Hypothesis(
                f"F.kl_div's formula {label}: probabilities given where log-probabilities "
                "are expected",
                params,
                None,
                probes,
                [f(pa, pb) for pa, pb, _, _ in decoded],
                extra={"axis": axis, "example": example},
            )
        )
    return out


def _jsd_terms(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    m = np.log(0.5 * (np.exp(pa) + np.exp(pb)))
    return 0.5 * (_pointwise(pa, m) + _pointwise(pb, m))


def _temperature_search(logits_runs, a_name: str, b_name: str) -> Hypothesis | None:
    """Find a temperature T such that the function is a KL of softmax(logits / T)."""
    best: Hypothesis | None = None
    for (axis, axes), runs in logits_runs.items():
        example = tuple(a for a in axes if a != "C")
        probes = [p for _, _, p in runs]
        for direction in ("a||b", "b||a"):

            def score(
                log_t: float, direction: str = direction, runs=runs, axis=axis, probes=probes
            ) -> float:
                t = math.exp(log_t)
                el = []
                for xa, xb, _ in runs:
                    la, lb = _log_softmax(xa / t, axis), _log_softmax(xb / t, axis)
                    el.append(_pointwise(la, lb) if direction == "a||b" else _pointwise(lb, la))
                r = fit(probes, el)
                return math.inf if r is None else r.error

            grid = np.linspace(math.log(0.1), math.log(20.0), 60)
            errs = [score(g) for g in grid]
            i = int(np.argmin(errs))
            if not np.isfinite(errs[i]):
                continue
            from scipy.optimize import minimize_scalar

            lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
            opt = minimize_scalar(
                score, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
            )
            t = float(math.exp(opt.x))
            for candidate in (round(t, 2), round(t, 4), t):
                el = []
                for xa, xb, _ in runs:
                    la = _log_softmax(xa / candidate, axis)
                    lb = _log_softmax(xb / candidate, axis)
                    el.append(_pointwise(la, lb) if direction == "a||b" else _pointwise(lb, la))
                h = Hypothesis(
                    f"logits/logits/{direction}/axis {axis}/T={candidate:g}",
                    {a_name: "logits", b_name: "logits"},
                    direction,
                    probes,
                    el,
                    temperature=candidate,
                    extra={"axis": axis, "example": example},
                )
                h.result = fit(probes, el)
                if h.result is not None and h.result.ok:
                    if best is None or h.result.error < best.result.error:
                        best = h
                    break
    return best
