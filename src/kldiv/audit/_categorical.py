"""The ``categorical`` kind: KL between discrete distributions (classifier and LM distillation).

Probes: (B, C) with the classes last or on axis 0, and (B, T, C) and (B, C, T) at rank 3, each
side given as probabilities, log-probabilities and logits (logits carry a random shift per
distribution, so a function that does not normalize them shows it). A reading is a class axis,
an input space per argument and a direction that explain every rank with one reduction. When
nothing fits at temperature 1: a temperature shared by both sides, or on one side only. Then
problems that recur in distillation code: T² applied twice or not at all, dividing twice,
the direction against the argument names, clips at tiny probabilities; and, when nothing fits,
what it computes instead (a cross-entropy, a JSD, a KL/entropy mix).
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import numpy as np

from .._kl import kl as _exact_kl
from ..dists import Categorical
from ._fit import Fit, Probe, fit, predict
from ._report import Problem
from ._session import (
    NOISY_2D,
    NOISY_3D,
    SHAPES_2D,
    SHAPES_3D,
    SPACES,
    Abort,
    Hypothesis,
    Session,
    best_of,
    check_gradients,
    factor_suffix,
    find_clamp,
    not_kl,
    read_reduction,
    reading_text,
    runner_up_evidence,
    saturated_candidates,
    summary_exact,
    verdict_for,
)

#: probe layouts: (name, class axis, axes, shapes); a family reads a 2-D and a 3-D layout alike
LAYOUTS = {
    "2d": (-1, ("B", "C")),
    "2d-first": (0, ("C", "B")),
    "3d": (-1, ("B", "T", "C")),
    "3d-axis1": (1, ("B", "C", "T")),
}
FAMILIES = {  # name: (class axis reported, layouts, rank order)
    "last": (-1, ("2d", "3d")),
    "axis1": (1, ("2d", "3d-axis1")),
    "first": (0, ("2d-first",)),
}


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


class _Run:
    """One layout and one pair of input spaces, called on its shapes."""

    def __init__(self, layout: str, sa: str, sb: str):
        self.layout, self.sa, self.sb = layout, sa, sb
        self.axis, self.axes = LAYOUTS[layout]
        self.probes: list[Probe] = []
        self.decoded: list[tuple[np.ndarray, np.ndarray]] = []  # log-probs of a and b
        self.raw: list[tuple[np.ndarray, np.ndarray]] = []  # what the function was given


def audit_categorical(session: Session) -> None:
    report, names = session.report, session.names
    a_name, b_name = names[0], names[1]
    _first_call(session, a_name, b_name)
    random_fn = session.random
    shapes = {
        "2d": NOISY_2D if random_fn else SHAPES_2D,
        "2d-first": SHAPES_2D,
        "3d": NOISY_3D if random_fn else SHAPES_3D,
        "3d-axis1": NOISY_3D if random_fn else SHAPES_3D,
    }
    layouts = ("2d", "3d") if random_fn else tuple(LAYOUTS)
    encodings = [("logits", "logits")] + [
        (sa, sb) for sa in SPACES for sb in SPACES if (sa, sb) != ("logits", "logits")
    ]
    if random_fn:  # each encoding costs many calls: the general ones first, stop at a fit
        encodings = [("logits", "logits"), ("probs", "probs")]
        shapes["3d"] = NOISY_3D[:1]
    runs: dict[tuple[str, str, str], _Run] = {}
    failures: list[tuple[str, str, str | None]] = []
    if random_fn:
        for enc in encodings:
            _probe_layouts(session, runs, failures, layouts, shapes, [enc], a_name, b_name)
            found, _ = best_of(_hypotheses(runs, a_name, b_name))
            if found is not None:
                break
        layouts = ()
    _probe_layouts(session, runs, failures, layouts, shapes, encodings, a_name, b_name)
    if not runs:
        if not failures:
            raise Abort("raises", "no probe ran")
        code, message, trace = failures[0]
        raise Abort("nan" if code == "nan" else "raises", message.split(": ", 1)[1], trace)
    hypotheses = _hypotheses(runs, a_name, b_name)
    best, closest = best_of(hypotheses)
    if best is None:  # a temperature inside the function?
        best = _temperature_search(runs, a_name, b_name)
        if best is not None:
            hypotheses.append(best)
    clamp = None
    if best is None and not random_fn:
        best, clamp = _search_clamp(session, hypotheses, runs)
    if best is None:
        if random_fn:
            _biased_estimate(session, hypotheses)
            return
        alternatives = _alternatives(runs, a_name, b_name)
        alt, _ = best_of(alternatives)
        if alt is None:
            alt = _mixture(runs, a_name, b_name)
        if alt is not None:
            alt = _most_general(alternatives, alt, same_label=True)
        example = (alt or closest).extra.get("example", ("B",)) if (alt or closest) else ("B",)
        not_kl(session, alt, closest, example, ("C",), hypotheses)
        if closest is not None and closest.result is not None and alt is None:
            report.direction = None
        return
    best = _most_general(hypotheses, best, same_label=False)
    if random_fn and not _verify_noisy(session, best):
        _biased_estimate(session, [h for h in hypotheses if h is not best] + [best])
        return
    if clamp is None and not random_fn and best.temperature is None and "ta" not in best.extra:
        clamp = _check_extremes(session, best, runs)
    _report_reading(session, best, hypotheses, runs, failures, clamp)


def _probe_layouts(session, runs, failures, layouts, shapes, encodings, a_name, b_name) -> None:
    """Call the function on every layout and input-space pair; record the runs and failures."""
    rng = session.rng
    for layout in layouts:
        axis, axes = LAYOUTS[layout]
        base = []
        for shape in shapes[layout]:
            base.append(
                (
                    _log_softmax(rng.normal(0.0, 1.3, shape), axis),
                    _log_softmax(rng.normal(0.0, 1.3, shape), axis),
                    shape,
                )
            )
        for sa, sb in encodings:
            run = _Run(layout, sa, sb)
            try:
                for la, lb, shape in base:
                    xa = session.round(_encode(la, sa, axis, rng))
                    xb = session.round(_encode(lb, sb, axis, rng))
                    call = session.call({a_name: xa, b_name: xb})
                    sizes = {"T": 1} | dict(zip(axes, shape, strict=True))
                    run.probes.append(session.probe(call, axes, sizes))
                    run.decoded.append((_decode(xa, sa, axis), _decode(xb, sb, axis)))
                    run.raw.append((xa, xb))
            except Abort as exc:
                if exc.code == "wrong-backend" and not runs and layout == layouts[-1]:
                    raise  # nothing ran in any layout: let the next backend try
                if exc.code not in ("raises", "nan", "wrong-backend"):
                    raise
                failures.append((exc.code, f"{sa}/{sb}: {exc.message}", exc.trace))
                continue
            runs[(layout, sa, sb)] = run


def _first_call(session: Session, a_name: str, b_name: str) -> None:
    """The first call (rank 2, else rank 3): does it run, and does it sample inside?"""
    rng = session.rng
    error = None
    for shape in (SHAPES_2D[0], SHAPES_3D[0]):
        la = _log_softmax(rng.normal(0.0, 1.3, shape), -1)
        lb = _log_softmax(rng.normal(0.0, 1.3, shape), -1)
        args = {  # probabilities are valid as logits too: every reading can take them
            a_name: session.round(_encode(la, "probs", -1, rng)),
            b_name: session.round(_encode(lb, "probs", -1, rng)),
        }
        try:
            session.detect_randomness(args)
            return
        except Abort as exc:
            if exc.code == "nan":
                return  # the layouts below say which spaces it takes
            if exc.code not in ("raises", "wrong-backend"):
                raise
            error = error or exc
    assert error is not None
    raise error


def _family_runs(runs: dict, a_name: str, b_name: str):
    """For each family and input-space pair: the runs to read together, and how they read."""
    for fam, (class_axis, layouts) in FAMILIES.items():
        pairs = dict.fromkeys((sa, sb) for (lay, sa, sb) in runs if lay in layouts)
        for sa, sb in pairs:
            parts = [runs[(lay, sa, sb)] for lay in layouts if (lay, sa, sb) in runs]
            options = [parts, parts[:1]] if len(parts) > 1 else [parts]
            for use in options:
                rank3 = any(r.layout.startswith("3d") for r in use)
                if fam == "axis1" and not any(r.layout == "3d-axis1" for r in use):
                    continue  # the same as "last" at rank 2
                extra = {
                    "axis": class_axis,
                    "family": fam,
                    "example": ("B", "T") if rank3 else ("B",),
                    "rank": 0 if len(use) > 1 else 1,
                    "runs": use,
                }
                yield use, {a_name: sa, b_name: sb}, extra


def _hypotheses(runs: dict, a_name: str, b_name: str) -> list[Hypothesis]:
    out = []
    for use, params, extra in _family_runs(runs, a_name, b_name):
        sa, sb = params.values()
        probes = [p for r in use for p in r.probes]
        for direction in ("a||b", "b||a"):
            elements = [
                _pointwise(pa, pb) if direction == "a||b" else _pointwise(pb, pa)
                for r in use
                for pa, pb in r.decoded
            ]
            out.append(
                Hypothesis(
                    f"{sa}/{sb}/{direction}/{extra['family']}",
                    dict(params),
                    direction,
                    probes,
                    elements,
                    extra=dict(extra),
                )
            )
    return out


_SPACE_RANK = {"probs": 0, "log_probs": 1, "logits": 2}


def _most_general(hypotheses, best: Hypothesis, *, same_label: bool):
    """Among readings that fit like ``best``, the one with the most general input spaces."""
    same = [
        h
        for h in hypotheses
        if h.result is not None
        and h.result.ok
        and h.direction == best.direction
        and h.extra.get("axis") == best.extra.get("axis")
        and h.extra.get("rank") == best.extra.get("rank")
        and h.temperature == best.temperature
        and (not same_label or h.label == best.label)
    ]
    return max(
        same or [best],
        key=lambda h: (sum(_SPACE_RANK.get(v, 0) for v in h.params.values()), -h.result.error),
    )


# ----------------------------------------------------------------------------------------------
# the report of a reading
# ----------------------------------------------------------------------------------------------
def _report_reading(session, best: Hypothesis, hypotheses, runs, failures, clamp) -> None:
    report = session.report
    result = best.result
    assert result is not None
    axis = best.extra["axis"]
    example = best.extra["example"]
    report.params = dict(best.params)
    report.direction = best.direction
    report.temperature = best.temperature
    report.class_axis = axis
    session.final_probes = list(best.probes)
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
        report.verdict = "not-kl"
        report.reduction = "none"
        report.closest = "the per-class terms p·log(p/q) of the KL"
        report.summary = (
            "returns the per-class terms of the KL, not summed over the classes (sum over the "
            "class axis to get the KL)"
        )
        report.evidence.append(
            f"its output keeps the class axis ({'last' if axis == -1 else axis})"
        )
        return
    red = read_reduction(result, example, ("C",), mask=False)
    if red.reduction is None:
        report.verdict = "not-kl"
        report.summary = (
            "returns one number per position, reduced over the batch: no kldiv reduction"
        )
        return
    reduction, factor = red.reduction, red.factor
    report.reduction, report.factor = reduction, factor
    report.notes.extend(red.notes)
    if session.random:
        report.verdict = "unbiased-estimator" if result.k > 0 else "not-kl"
        report.bias = 0.0
        scaled = "" if factor == "1" else f" times {factor}"
        report.summary = f"samples inside; its expectation is the KL{scaled} (an unbiased estimate)"
        if factor != "1":
            report.problems.append(Problem("scaled", f"its expectation is the KL times {factor}"))
    else:
        report.verdict = verdict_for(result.k, factor)
    if red.extra:
        report.problems.append(
            Problem(
                "divides-twice",
                "it divides by "
                + " and ".join(f"{s} ({_SYM[s]})" for s in red.extra)
                + f" on top of the {reduction} reduction: the loss shrinks with the "
                + ("sequence length" if "T" in red.extra else "batch size"),
            )
        )
    _temperature_problems(report, best, result)
    _direction_problems(session, best)
    if axis == 0:
        report.notes.append(
            "the classes are on axis 0 (each column is a distribution): a 'batch' mean over "
            "axis 0 divides by the number of classes"
        )
    best_layouts = {r.layout for r in best.extra["runs"]}
    if best_layouts <= {"2d", "2d-first"} and any(k[0].startswith("3d") for k in runs):
        report.notes.append(
            "at rank 3 ((B, T, C) or (B, C, T)) its outputs follow no single reading: the reading "
            "below holds for (B, C) inputs"
        )
    elif not best_layouts & {"2d", "2d-first"}:
        report.notes.append("it fails on (B, C) inputs: the reading below is from rank-3 ones")
    report.equivalent = _equivalent(best, reduction, factor, red.summed)
    if session.random:
        report.equivalent += "  (exact: no sampling needed)"
    if clamp is not None:
        report.problems.append(clamp.problem())
        report.equivalent = None
        report.summary = f"computes the KL, but {clamp.describe()}"
    elif not session.random:
        report.summary = summary_exact(report)
    where = {-1: "last", 0: "on axis 0", 1: "on axis 1"}[axis]
    ranks = "rank 2 and 3" if best.extra["rank"] == 0 else "rank 2"
    report.evidence.append(
        f"{(len(result.kept) and 'per-distribution') or 'scalar'} outputs on {len(best.probes)} "
        f"probes of {ranks}, classes {where}: equal to the exact KL with this reading to "
        f"{result.error:.1g} relative"
    )
    runner_up_evidence(report, [h for h in hypotheses if h.params != best.params], best)
    if failures:
        report.notes.append(
            "it rejects other input spaces or layouts: " + "; ".join(m for _, m, _ in failures[:2])
        )
    if (
        not session.random
        and clamp is None
        and best.temperature is None
        and "ta" not in best.extra
        and "tb" not in best.extra
    ):
        _clip_check(session, best)
    if not session.random and best.temperature is None and "ta" not in best.extra:
        _gradient_check(session, best, result)


_SYM = {"B": "the batch size", "T": "the sequence length", "M": "the valid positions"}


def _equivalent(best: Hypothesis, reduction: str, factor: str, summed) -> str:
    axis = best.extra["axis"]
    spec_axis = "" if axis == -1 else f", axis={axis}"
    t = best.temperature
    ta, tb = best.extra.get("ta"), best.extra.get("tb")

    def spec(name: str, side_t: float | None) -> str:
        space = best.params[name]
        arg = name if side_t in (None, 1.0) else f"{name} / {side_t:g}"
        return f"kldiv.Categorical({space}={arg}{spec_axis})"

    names = list(best.params)
    p_spec = spec(names[0], t if t is not None else ta)
    q_spec = spec(names[1], t if t is not None else tb)
    if best.direction == "b||a":
        p_spec, q_spec = q_spec, p_spec
    event = ", event_axis=1" if summed else ""
    red = "" if reduction == "none" else f', reduction="{reduction}"'
    return f"kldiv.kl({p_spec}, {q_spec}{event}{red}){factor_suffix(factor)}"


def _temperature_problems(report, best: Hypothesis, result: Fit) -> None:
    t = best.temperature
    if t is not None:
        t2 = t * t
        note = f"softens both sides with temperature {t:g}"
        if abs(result.k - t2) <= 1e-3 * t2:
            note += " and multiplies by T² (Hinton's convention)"
        report.notes.append(note)
        if abs(result.k - t2 * t2) <= 1e-3 * t2 * t2 and t2 != 1:
            report.problems.append(
                Problem(
                    "temperature-factor",
                    f"it multiplies by T⁴ = {t2 * t2:g}: the T² factor is applied twice",
                )
            )
        elif abs(result.k - 1.0) <= 1e-3 and abs(t - 1.0) > 1e-3:
            report.problems.append(
                Problem(
                    "temperature-factor",
                    f"it softens with T = {t:g} but does not multiply by T² = {t2:g}: its "
                    "gradients are 1/T² of Hinton's (the soft loss fades against a hard-label "
                    "loss)",
                )
            )
    for side in ("ta", "tb"):
        ts = best.extra.get(side)
        if ts not in (None, 1.0):
            report.notes.append(
                f"softens only {best.extra[side + '_name']} with temperature {ts:g} "
                f"(softmax(x / {ts:g}))"
            )
            report.temperature = None


_TEACHER = re.compile(r"teach|(^|_)t($|_)|^y_?t|target|label|soft|ref|^p_?t|tgt|old")
_STUDENT = re.compile(r"stud|(^|_)s($|_)|^y_?s|pred|input|output|logit_s|^p_?s|new|model")


def _direction_problems(session: Session, best: Hypothesis) -> None:
    """Distillation's direction: KL(teacher || student) is the forward (Hinton) one."""
    names = list(best.params)
    roles = []
    for n in names:
        lowered = n.lower()
        roles.append(
            "teacher"
            if _TEACHER.search(lowered)
            else "student"
            if _STUDENT.search(lowered)
            else None
        )
    if sorted(r for r in roles if r) != ["student", "teacher"]:
        return
    first = names[0] if best.direction == "a||b" else names[1]
    if roles[names.index(first)] == "teacher":
        session.report.notes.append(
            "the expectation is under the teacher: KL(teacher || student), the forward KL of "
            "Hinton-style distillation"
        )
        return
    text = _source_text(session.caller.fn).lower()
    message = (
        "it computes KL(student || teacher), the reverse (mode-seeking) KL, with the expectation "
        "under the student"
    )
    if "forward" in text and "reverse" not in text:
        session.report.problems.append(
            Problem("direction", message + ", though its code or docs say forward KL")
        )
    else:
        session.report.notes.append(
            message + "; Hinton-style distillation is KL(teacher || student)"
        )


def _source_text(fn: Any) -> str:
    target = getattr(fn, "forward", fn)
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        return getattr(target, "__doc__", "") or ""


def _clip_check(session: Session, best: Hypothesis) -> None:
    """Probabilities below 1e-7 on the second distribution: a clip or an epsilon shows here."""
    run = best.extra["runs"][0]
    axis = run.axis
    rng = session.rng
    shape = run.probes[0].shape
    la = _log_softmax(rng.normal(0.0, 0.8, shape), axis)
    lb = la.copy()
    # on the distribution inside the log, some classes that the other gives mass get ~1e-12
    low = rng.random(shape) < 0.4
    lb = _log_softmax(np.where(low, lb - 28.0, lb), axis)
    names = list(best.params)
    p_name = names[0] if best.direction == "a||b" else names[1]
    q_name = names[1] if p_name == names[0] else names[0]
    logs = {p_name: la, q_name: lb}
    args = {n: session.round(_encode(logs[n], best.params[n], axis, rng)) for n in names}
    try:
        call = session.call(args)
    except Abort as exc:
        if exc.code in ("nan", "raises"):
            session.report.problems.append(
                Problem(
                    "clipping",
                    f"it fails when {q_name} has probabilities near 1e-12 ({exc.message})",
                )
            )
            return
        raise
    decoded = {n: _decode(args[n], best.params[n], axis) for n in names}
    el = _pointwise(decoded[p_name], decoded[q_name])
    probe = Probe(run.probes[0].axes, run.probes[0].sizes, call.output, run.probes[0].tol)
    want = predict(probe, el, best.result)
    got = np.asarray(call.output, dtype=np.float64)
    if not np.allclose(got, want, rtol=1e-3):
        session.report.problems.append(
            Problem(
                "clipping",
                f"where {q_name} has probabilities near 1e-12 it returns {float(np.sum(got)):.4g}"
                f" for a KL of {float(np.sum(want)):.4g}: it clips or adds an epsilon at small "
                "probabilities",
            )
        )
    else:
        session.report.evidence.append(
            f"it stays exact where {q_name} has probabilities near 1e-12"
        )


def _gradient_check(session: Session, best: Hypothesis, result: Fit) -> None:
    if session.caller.backend.name == "numpy":
        return
    run = best.extra["runs"][0]
    axis = run.axis
    rng = session.rng
    names = list(best.params)
    sa, sb = best.params[names[0]], best.params[names[1]]
    shape0 = run.probes[0].shape
    la = _log_softmax(rng.normal(0.0, 1.3, shape0), axis)
    lb = _log_softmax(rng.normal(0.0, 1.3, shape0), axis)
    args = {
        names[0]: session.round(_encode(la, sa, axis, rng)),
        names[1]: session.round(_encode(lb, sb, axis, rng)),
    }
    sizes = dict(run.probes[0].sizes)

    def reference(natives: dict[str, Any]) -> Any:
        ca = Categorical(**{sa: natives[names[0]]}, axis=axis)
        cb = Categorical(**{sb: natives[names[1]]}, axis=axis)
        first, second = (ca, cb) if best.direction == "a||b" else (cb, ca)
        values = _exact_kl(first, second, reduction="none" if result.kept else "sum")
        return values * (result.k / math.prod(sizes.get(s, 1) for s in result.denominator))

    normals = {}
    for name, space in ((names[0], sa), (names[1], sb)):
        if space == "probs":
            normals[name] = (np.ones_like, axis)
        elif space == "log_probs":
            normals[name] = (np.exp, axis)
    check_gradients(session, args, reference, normals=normals)


# ----------------------------------------------------------------------------------------------
# temperatures
# ----------------------------------------------------------------------------------------------
def _temperature_search(runs: dict, a_name: str, b_name: str) -> Hypothesis | None:
    """A temperature T, shared or on one side, such that it is a KL of softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    best: Hypothesis | None = None
    families = {}
    for fam, (class_axis, layouts) in FAMILIES.items():
        use = [
            runs[(lay, "logits", "logits")] for lay in layouts if (lay, "logits", "logits") in runs
        ]
        if use and (fam != "axis1" or len(use) > 1):
            families[fam] = (class_axis, use)
    for fam, (class_axis, use) in families.items():
        probes = [p for r in use for p in r.probes]
        raws = [(xa, xb, r.axis) for r in use for xa, xb in r.raw]
        for side in ("both", "a", "b"):
            for direction in ("a||b", "b||a"):

                def elements(t: float, side=side, direction=direction, raws=raws):
                    ta = t if side in ("both", "a") else 1.0
                    tb = t if side in ("both", "b") else 1.0
                    out = []
                    for xa, xb, axis in raws:
                        la, lb = _log_softmax(xa / ta, axis), _log_softmax(xb / tb, axis)
                        out.append(
                            _pointwise(la, lb) if direction == "a||b" else _pointwise(lb, la)
                        )
                    return out

                def score(log_t: float, elements=elements, probes=probes) -> float:
                    r = fit(probes, elements(math.exp(log_t)))
                    return math.inf if r is None else r.error

                grid = np.linspace(math.log(0.05), math.log(25.0), 32)
                errs = [score(g) for g in grid]
                i = int(np.argmin(errs))
                if not errs[i] < 0.2:  # nothing near: no temperature explains it
                    continue
                lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
                opt = minimize_scalar(
                    score, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
                )
                t = float(math.exp(opt.x))
                for candidate in (round(t, 2), round(t, 4), t):
                    if side == "both" and abs(candidate - 1.0) < 1e-9:
                        continue
                    el = elements(candidate)
                    extra = {
                        "axis": class_axis,
                        "family": fam,
                        "example": ("B", "T") if len(use) > 1 else ("B",),
                        "rank": 0 if len(use) > 1 else 1,
                        "runs": use,
                    }
                    if side != "both":
                        key = "ta" if side == "a" else "tb"
                        extra[key] = candidate
                        extra[key + "_name"] = a_name if side == "a" else b_name
                    h = Hypothesis(
                        f"logits/logits/{direction}/{fam}/T={candidate:g}/{side}",
                        {a_name: "logits", b_name: "logits"},
                        direction,
                        probes,
                        el,
                        temperature=candidate if side == "both" else None,
                        extra=extra,
                    )
                    h.result = fit(probes, el)
                    if h.result is not None and h.result.ok:
                        if best is None or (h.extra["rank"], h.result.error) < (
                            best.extra["rank"],
                            best.result.error,
                        ):
                            best = h
                        break
        if best is not None and best.extra["rank"] == 0:
            break
    return best


# ----------------------------------------------------------------------------------------------
# floors and caps
# ----------------------------------------------------------------------------------------------
def _extreme_runs(session: Session, h: Hypothesis):
    """Probes whose KL under ``h``'s reading is tiny (1e-6) or huge (tens of nats)."""
    run = h.extra["runs"][0]
    axis, axes = run.axis, run.axes
    rng = session.rng
    names = list(h.params)
    probes, decoded, tiny, huge = [], [], [], []
    sizes = (("near", tiny), ("huge", huge)) if session.random else (("tiny", tiny), ("huge", huge))
    for size, ids in sizes:
        for shape in (NOISY_2D[0],) if session.random else (SHAPES_2D[0], SHAPES_2D[2]):
            shape = shape if axes[0] == "B" else shape[::-1]
            if size in ("tiny", "near"):
                la = _log_softmax(rng.normal(0.0, 1.0, shape), axis)
                step = 2e-3 if size == "tiny" else 0.25
                lb = _log_softmax(la + step * rng.standard_normal(shape), axis)
            else:  # far apart, but no probability below ~1e-5 (clips are checked apart)
                la = _log_softmax(rng.uniform(-5.0, 5.0, shape), axis)
                lb = _log_softmax(rng.uniform(-5.0, 5.0, shape), axis)
            xs = {
                names[0]: session.round(_encode(la, h.params[names[0]], axis, rng)),
                names[1]: session.round(_encode(lb, h.params[names[1]], axis, rng)),
            }
            call = session.call(xs)
            ids.append(len(probes))
            probes.append(session.probe(call, axes, {"T": 1} | dict(zip(axes, shape, strict=True))))
            pa = _decode(xs[names[0]], h.params[names[0]], axis)
            pb = _decode(xs[names[1]], h.params[names[1]], axis)
            decoded.append(_pointwise(pa, pb) if h.direction == "a||b" else _pointwise(pb, pa))
    return probes, decoded, tiny, huge


def _verify_noisy(session: Session, best: Hypothesis) -> bool:
    """A function that samples inside and is proportional to a KL on the usual probes: is it
    still on near (KL ~0.03) and far apart distributions?"""
    run = best.extra["runs"][0]
    if run.layout.startswith("3d"):
        return True
    try:
        ext, el, _, _ = _extreme_runs(session, best)
    except Abort as exc:
        if exc.code not in ("nan", "raises"):
            raise
        return False
    r = fit(best.probes + ext, best.elements + el)
    if r is not None and r.ok:
        session.report.evidence.append(
            "it stays proportional to the KL on near and on far apart distributions"
        )
        return True
    session.report.notes.append(
        f"on the usual probes its mean is close to the KL with {reading_text(best)}, but not on "
        "near or far apart distributions: its expectation is not proportional to the KL"
    )
    return False


def _check_extremes(session: Session, best: Hypothesis, runs):
    run = best.extra["runs"][0]
    if run.layout.startswith("3d"):
        return None
    try:
        ext, el, tiny, huge = _extreme_runs(session, best)
    except Abort as exc:
        if exc.code not in ("nan", "raises"):
            raise
        return None
    base_el = [
        _pointwise(pa, pb) if best.direction == "a||b" else _pointwise(pb, pa)
        for pa, pb in run.decoded
    ]
    r = fit(run.probes + ext, base_el + el)
    if r is not None and r.ok:
        return None
    n = len(run.probes)
    return find_clamp(
        run.probes + ext, base_el + el, ("C",), [n + i for i in tiny], [n + i for i in huge]
    )


def _search_clamp(session: Session, hypotheses, runs):
    near = sorted(
        (h for h in hypotheses if h.result is not None and h.extra.get("rank") == 1),
        key=lambda h: h.result.error,
    )[:3]
    near += [
        h
        for h in saturated_candidates(hypotheses, lambda h: h.extra.get("rank") == 1)[:4]
        if h not in near
    ]
    for h in near:
        run = h.extra["runs"][0]
        if run.layout.startswith("3d"):
            continue
        try:
            ext, el, tiny, huge = _extreme_runs(session, h)
        except Abort as exc:
            if exc.code not in ("nan", "raises"):
                raise
            continue
        base_el = [
            _pointwise(pa, pb) if h.direction == "a||b" else _pointwise(pb, pa)
            for pa, pb in run.decoded
        ]
        n = len(run.probes)
        clamp = find_clamp(
            run.probes + ext, base_el + el, ("C",), [n + i for i in tiny], [n + i for i in huge]
        )
        if clamp is not None:
            h.result = clamp.result
            h.probes = run.probes + ext
            h.elements = base_el + el
            return h, clamp
    return None, None


# ----------------------------------------------------------------------------------------------
# what it is, when it is no KL
# ----------------------------------------------------------------------------------------------
def _entropy_terms(lp: np.ndarray) -> np.ndarray:
    p = np.exp(lp)
    return np.where(p > 0, -p * lp, 0.0)


def _jsd_terms(pa: np.ndarray, pb: np.ndarray, beta: float = 0.5) -> np.ndarray:
    m = np.log(beta * np.exp(pa) + (1 - beta) * np.exp(pb))
    return beta * _pointwise(pa, m) + (1 - beta) * _pointwise(pb, m)


def _alternatives(runs: dict, a_name: str, b_name: str) -> list[Hypothesis]:
    named = {
        "the cross-entropy H(a, b) = -Σ a·log b": (
            lambda pa, pb: -np.exp(pa) * pb,
            (
                "cross-entropy",
                f"it computes the cross-entropy H({a_name}, {b_name}) = "
                f"KL({a_name} || {b_name}) + H({a_name}): off from the KL by the entropy of "
                f"{a_name}",
            ),
        ),
        "the cross-entropy H(b, a) = -Σ b·log a": (
            lambda pa, pb: -np.exp(pb) * pa,
            (
                "cross-entropy",
                f"it computes the cross-entropy H({b_name}, {a_name}) = "
                f"KL({b_name} || {a_name}) + H({b_name}): off from the KL by the entropy of "
                f"{b_name}",
            ),
        ),
        "the symmetric KL(a||b) + KL(b||a)": (
            lambda pa, pb: _pointwise(pa, pb) + _pointwise(pb, pa),
            ("symmetric", "it computes a symmetrized KL (Jeffreys divergence), not one KL"),
        ),
        "the Jensen-Shannon divergence JS(a, b)": (
            _jsd_terms,
            (
                "jsd",
                "it computes the Jensen-Shannon divergence (a generalized JSD at weight 0.5, "
                "TRL GKD's default beta), not a KL",
            ),
        ),
        "F.kl_div's formula b·(log b - p_a): probabilities given where log-probabilities are "
        "expected": (
            lambda pa, pb: np.exp(pb) * (pb - np.exp(pa)),
            (
                "kl-div-input",
                f"it passes probabilities of {a_name} where F.kl_div takes log-probabilities",
            ),
        ),
        "F.kl_div's formula a·(log a - p_b): probabilities given where log-probabilities are "
        "expected": (
            lambda pa, pb: np.exp(pa) * (pa - np.exp(pb)),
            (
                "kl-div-input",
                f"it passes probabilities of {b_name} where F.kl_div takes log-probabilities",
            ),
        ),
    }
    for beta in (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9):
        named[f"the generalized JSD with weight {beta:g} on a (TRL GKD's beta)"] = (
            lambda pa, pb, beta=beta: _jsd_terms(pa, pb, beta),
            (
                "jsd",
                f"it computes a generalized Jensen-Shannon divergence with weight {beta:g}, "
                "not a KL",
            ),
        )
        named[f"the skew KL(a || {beta:g} a + {1 - beta:g} b)"] = (
            lambda pa, pb, beta=beta: _pointwise(
                pa, np.log(beta * np.exp(pa) + (1 - beta) * np.exp(pb))
            ),
            (
                "skew-kl",
                f"it computes KL({a_name} || {beta:g}·{a_name} + {1 - beta:g}·{b_name}), "
                "a skew KL, not the KL between the two",
            ),
        )
        named[f"the skew KL(b || {beta:g} b + {1 - beta:g} a)"] = (
            lambda pa, pb, beta=beta: _pointwise(
                pb, np.log(beta * np.exp(pb) + (1 - beta) * np.exp(pa))
            ),
            (
                "skew-kl",
                f"it computes KL({b_name} || {beta:g}·{b_name} + {1 - beta:g}·{a_name}), "
                "a skew KL, not the KL between the two",
            ),
        )
    out = []
    for use, params, extra in _family_runs(runs, a_name, b_name):
        example, axis = extra["example"], extra["axis"]
        probes = [p for r in use for p in r.probes]
        for label, (f, problem) in named.items():
            out.append(
                Hypothesis(
                    label,
                    params,
                    None,
                    probes,
                    [f(pa, pb) for r in use for pa, pb in r.decoded],
                    extra={"axis": axis, "example": example, "problem": problem},
                )
            )
    return out


def _mixture(runs: dict, a_name: str, b_name: str) -> Hypothesis | None:
    """A linear mix of KLs and entropies (a KL/cross-entropy mix at some weight)."""
    from ._fit import denominators

    best = None
    for use, params, extra in _family_runs(runs, a_name, b_name):
        example, axis = extra["example"], extra["axis"]
        probes = [p for r in use for p in r.probes]
        decoded = [d for r in use for d in r.decoded]
        basis = [
            [float(np.sum(f(pa, pb))) for pa, pb in decoded]
            for f in (
                _pointwise,
                lambda pa, pb: _pointwise(pb, pa),
                lambda pa, pb: _entropy_terms(pa),
                lambda pa, pb: _entropy_terms(pb),
            )
        ]
        x = np.asarray(basis).T
        y = np.asarray([float(np.sum(p.output)) for p in probes])
        symbols = list(dict.fromkeys(s for p in probes for s in p.sizes))
        for den in denominators(symbols)[:8]:
            n = np.asarray([math.prod(p.sizes.get(s, 1) for s in den) for p in probes], float)
            coef, *_ = np.linalg.lstsq(x, y * n, rcond=None)
            resid = float(np.max(np.abs(x @ coef - y * n)) / max(np.max(np.abs(y * n)), 1e-300))
            if resid > 1e-6 or np.count_nonzero(np.abs(coef) > 1e-6) < 2:
                continue
            words = ["KL(a||b)", "KL(b||a)", "H(a)", "H(b)"]
            text = " + ".join(
                f"{c:.3g}·{w}" for c, w in zip(coef, words, strict=True) if abs(c) > 1e-6
            )
            label = f"the mix {text} (reduced over {'*'.join(den) or 'nothing'})"
            if best is None:
                h = Hypothesis(
                    label,
                    params,
                    None,
                    probes,
                    [_pointwise(pa, pb) for pa, pb in decoded],
                    extra={
                        "axis": axis,
                        "example": example,
                        "problem": (
                            "mixture",
                            f"it computes {text} with a = {a_name}, b = {b_name}: a KL "
                            "mixed with entropies (a KL/cross-entropy mix at a fixed weight), "
                            "not a KL",
                        ),
                    },
                )
                h.result = Fit((), den, 1.0, resid, True)
                best = h
    return best


def _biased_estimate(session: Session, hypotheses) -> None:
    report = session.report
    near = [h for h in hypotheses if h.result is not None]
    if not near:
        report.verdict = "not-kl"
        report.summary = "its output shape matches no reduction of the inputs"
        return
    h = min(near, key=lambda h: h.result.error)
    r = h.result
    unit = Fit(r.kept, r.denominator, 1.0, 0.0, True)
    want = float(np.sum(predict(h.probes[0], h.elements[0], unit)))
    got = float(np.sum(h.probes[0].output))
    se = float(np.sqrt(np.sum(np.square(h.probes[0].se)))) if h.probes[0].se is not None else 0.0
    report.params = dict(h.params)
    report.direction = h.direction
    report.bias = got - want
    rel = abs(got - want) / max(abs(want), 1e-12)
    report.verdict = "biased-estimator" if rel < 5.0 and got > 0 else "not-kl"
    report.closest = f"KL with {reading_text(h)} (off by {r.error:.2g} relative)"
    report.summary = (
        f"samples inside; its expectation is not the KL: bias {got - want:+.4g} ± {se:.2g} at the "
        "first probe"
    )
    report.problems.append(
        Problem("biased", f"its expected value differs from the KL by {got - want:+.4g} ± {se:.2g}")
    )
    session.final_probes = list(h.probes)
