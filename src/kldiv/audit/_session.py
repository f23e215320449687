"""What every kind shares: the audit session, hypotheses and their fit, reductions in kldiv's
terms, gradient checks, floors and caps, and the problems every kind looks for.

Every kind follows one plan: make probes whose exact answer kldiv knows (NumPy float64, through
:func:`kldiv.kl`), call the function on them, and let :mod:`._fit` decide which hypothesis
(parametrization, direction, class axis, temperature) and which reduction explains the outputs.
A function that samples inside (two calls on the same inputs differ) is called many times per
probe and fitted on the means, with their standard errors.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._call import AuditTimeout, Call, Caller, autograd
from ._fit import Fit, Probe, fit, format_factor, predict, tolerance
from ._report import AuditReport, Problem

SCALES = ("std", "var", "log_std", "log_var", "softplus")
SPACES = ("probs", "log_probs", "logits")
SHAPES_2D = ((3, 5), (4, 2), (6, 3), (2, 7))
SHAPES_3D = ((2, 3, 5), (3, 4, 2), (4, 2, 6), (5, 3, 4))
# a function that samples inside is averaged over many calls on larger probes
NOISY_2D = ((48, 5), (64, 3), (40, 7), (56, 4))
NOISY_3D = ((12, 5, 6), (16, 3, 4))

#: what a kind's symbols mean, for the reports
SYMBOLS = {
    "B": "batch size",
    "D": "latent size",
    "C": "number of classes",
    "T": "sequence length",
    "M": "number of valid (unmasked) positions",
}

#: how each scale reading turns the argument into a standard deviation
SCALE_WORDS = {
    "std": "a standard deviation",
    "var": "a variance",
    "log_std": "a log standard deviation",
    "log_var": "a log-variance",
    "softplus": "softplus(x) = log(1 + e^x) of a standard deviation",
}


def std_from(param: str, s: Any, xp: Any = np) -> Any:
    """The standard deviation that the scale argument ``s`` read as ``param`` gives."""
    if param == "std":
        return s
    if param == "var":
        return xp.sqrt(s)
    if param == "log_std":
        return xp.exp(s)
    if param == "log_var":
        return xp.exp(0.5 * s)
    if param == "softplus":
        return xp.log1p(xp.exp(-xp.abs(s))) + xp.maximum(s, 0.0 * s)
    raise ValueError(param)


class Abort(Exception):
    """Stop probing: the function cannot be audited further (the reason goes in the report)."""

    def __init__(self, code: str, message: str, trace: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.trace = trace


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
        self.random = False  # two calls on the same inputs differ: it samples inside
        self.repeats = 1  # calls averaged per probe when it samples inside

    def call(self, args: dict[str, np.ndarray], *, keywords: bool = False) -> Call:
        if self.repeats > 1:
            return self._mean_call(args, keywords)
        return self._one_call(args, keywords)

    def _one_call(self, args: dict[str, np.ndarray], keywords: bool) -> Call:
        if time.perf_counter() > self.deadline:
            raise Abort("timeout", "the audit ran out of time before the probes were done")
        try:
            call = self.caller(args, keywords=keywords)
        except AuditTimeout as exc:
            raise Abort("timeout", f"the function did not return in time ({exc})") from None
        if call.error is not None:
            code = "wrong-backend" if self.succeeded == 0 else "raises"
            raise Abort(code, f"the function failed on a valid probe: {call.error}", call.trace)
        self.succeeded += 1
        assert call.output is not None
        if not np.all(np.isfinite(call.output)):
            self.nonfinite_seen = True
            raise Abort("nan", "the function returned NaN or inf on finite, valid inputs")
        return call

    def _mean_call(self, args: dict[str, np.ndarray], keywords: bool) -> Call:
        outs = [self._one_call(args, keywords) for _ in range(self.repeats)]
        stack = np.stack([c.output for c in outs])
        mean = stack.mean(axis=0)
        se = stack.std(axis=0, ddof=1) / math.sqrt(len(outs))
        return Call(output=mean, dtype=outs[0].dtype, se=se, seconds=sum(c.seconds for c in outs))

    def detect_randomness(self, args: dict[str, np.ndarray], *, keywords: bool = False) -> Call:
        """Call twice on the same inputs; if the outputs differ, average many calls from now on.

        The number of calls per probe is set from the time one call takes (16 to 256).
        """
        first = self._one_call(args, keywords)
        second = self._one_call(args, keywords)
        if np.shape(first.output) == np.shape(second.output) and np.array_equal(
            first.output, second.output
        ):
            return first
        self.random = True
        # a fixed count keeps reports reproducible; only a slow function gets fewer calls
        self.repeats = 64 if min(first.seconds, second.seconds) < 0.02 else 16
        self.report.notes.append(
            "two calls on the same inputs return different values: it samples inside, so each "
            f"probe is the mean of {self.repeats} seeded calls, fitted within its standard error"
        )
        return first

    def round(self, x: np.ndarray) -> np.ndarray:
        return self.caller.backend.round(x)

    def probe(self, call: Call, axes: tuple[str, ...], sizes: dict[str, int], mask: Any = None):
        return Probe(axes, dict(sizes), call.output, tolerance(call.dtype), mask, call.se)


def best_of(hypotheses: Sequence[Hypothesis]) -> tuple[Hypothesis | None, Hypothesis | None]:
    """(the best hypothesis that fits, the closest one overall)."""
    for h in hypotheses:
        h.result = fit(h.probes, h.elements)
    scored = [h for h in hypotheses if h.result is not None]
    # ties (a function of probabilities reads the same on either class axis) go to the last axis
    fitting = sorted(
        (h for h in scored if h.result.ok),
        key=lambda h: (h.extra.get("rank", 0), h.extra.get("axis", -1) != -1, h.result.error),
    )
    closest = min(
        scored,
        key=lambda h: h.result.error * (1.0 + 1e-6 * (h.extra.get("axis", -1) != -1)),
        default=None,
    )
    return (fitting[0] if fitting else None), closest


@dataclass
class Reduction:
    """A fit read in kldiv's terms."""

    reduction: str | None  # none, sum, mean, batchmean; None when no kldiv reduction gives it
    factor: str
    notes: list[str]
    summed: tuple[str, ...] = ()  # example axes summed like event axes (per-sequence sums)
    extra: tuple[str, ...] = ()  # symbols that divide beyond the reduction (dividing twice)


def interpret(
    result: Fit, example: Sequence[str], event: Sequence[str], mask: bool
) -> tuple[str, str, list[str]]:
    """kldiv's (reduction, factor, notes) for a fit of KL elements."""
    r = read_reduction(result, example, event, mask)
    return r.reduction or "none", r.factor, r.notes


def _without(den: list[str], drop: Sequence[str]) -> list[str]:
    rest = list(den)
    for s in drop:
        if s in rest:
            rest.remove(s)
    return rest


def read_reduction(result: Fit, example: Sequence[str], event: Sequence[str], mask: bool):
    """The reduction of a fit: which example axes it keeps, averages or sums, and its factor.

    ``example`` are the axes that index distributions (``B``, and ``T`` at rank 3); ``event``
    those a KL sums over. ``batchmean`` is kldiv's: the total over distributions divided by the
    size of axis 0 (``B``), which differs from ``mean`` once there is a ``T`` axis.
    """
    kept, den = list(result.kept), list(result.denominator)
    count = ["M"] if mask else list(example)
    summed: tuple[str, ...] = ()
    if kept and (all(s in kept for s in example) or (mask and set(example) & set(kept))):
        reduction, rest = "none", den
    elif kept:  # some example axes kept, others reduced: per-sequence values
        if any(s not in example for s in kept):
            return Reduction(None, format_factor(result.k, den), [])
        reduction = "none"
        lost = [s for s in example if s not in kept]
        summed = tuple(s for s in lost if s not in den)
        rest = den
    elif all(s in den for s in count):
        reduction, rest = "mean", _without(den, count)
    elif "B" in den and "B" in example:
        reduction, rest = "batchmean", _without(den, ["B"])
    else:
        reduction, rest = "sum", den
    if len(example) == 1 and reduction == "batchmean":
        reduction = "mean"
    notes: list[str] = []
    extra = []
    for s in rest:
        if s in event:
            notes.append(f"divides by {s} ({SYMBOLS[s]}): a mean over the event axis, not a sum")
        elif s in ("B", "M", "T"):
            extra.append(s)
            notes.append(f"divides by {s} ({SYMBOLS[s]}) on top of the reduction")
    return Reduction(reduction, format_factor(result.k, rest), notes, summed, tuple(extra))


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
    if backend.name == "numpy" or session.random:
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
    arrays = {k: v for k, v in args.items() if k not in caller.scalars}
    want = autograd(backend, reference, arrays, weights)
    worst, where = 0.0, None
    for name in arrays:
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
    kept = [probe.axes.index(s) for s in result.kept if s in probe.axes]
    reduced = tuple(i for i in range(len(probe.shape)) if i not in kept)
    s = xp.sum(e, axis=reduced) if reduced else e
    remaining = sorted(kept)
    if kept:
        s = xp.permute_dims(s, tuple(remaining.index(a) for a in kept))
    n = math.prod(probe.sizes.get(sym, 1) for sym in result.denominator)
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


def reading_text(h: Hypothesis) -> str:
    parts = [f"{k} as {v}" for k, v in h.params.items()]
    if h.direction:
        parts.append(f"direction {h.direction}")
    if h.temperature not in (None, 1.0):
        parts.append(f"temperature {h.temperature:g}")
    for side in ("ta", "tb"):
        t = h.extra.get(side)
        if t not in (None, 1.0):
            parts.append(f"temperature {t:g} on {h.extra.get(side + '_name', side)}")
    return ", ".join(parts)


def summary_exact(report: AuditReport) -> str:
    if report.verdict == "exact":
        return "computes the KL divergence exactly"
    return f"computes the KL divergence times {report.factor}"


def runner_up_evidence(report: AuditReport, hypotheses: Sequence[Hypothesis], best) -> None:
    others = [h for h in hypotheses if h is not best and h.result is not None]
    if others:
        second = min(others, key=lambda h: h.result.error)
        report.evidence.append(
            f"the next best reading ({reading_text(second) or second.label}) is off by "
            f"{second.result.error:.2g} relative"
        )


def sure_params(hypotheses: Sequence[Hypothesis], closest: Hypothesis | None) -> dict[str, str]:
    """Readings of single arguments that the closest hypothesis is sure of when none fits.

    An argument's reading counts as sure when every hypothesis that reads it otherwise is at
    least three times further from the outputs than the closest one.
    """
    if closest is None or closest.result is None:
        return {}
    best_err = closest.result.error
    out = {}
    for name, value in closest.params.items():
        rivals = [
            h.result.error
            for h in hypotheses
            if h.result is not None and h.params.get(name) not in (None, value)
        ]
        if rivals and min(rivals) > 3.0 * best_err and best_err < 0.5:
            out[name] = value
    return out


def not_kl(
    session: Session,
    alternative: Hypothesis | None,
    closest: Hypothesis | None,
    example: Sequence[str],
    event: Sequence[str],
    hypotheses: Sequence[Hypothesis] = (),
) -> None:
    """Fill the report of a function that computes no KL (naming what it is, if known)."""
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
        code = alternative.extra.get("problem")
        if code:
            report.problems.append(Problem(code[0], code[1]))
        return
    if closest is not None and closest.result is not None:
        report.closest = (
            f"KL with {reading_text(closest)} (off by {closest.result.error:.2g} relative)"
        )
        report.summary = "matches no KL reading of its arguments"
        report.params = sure_params(hypotheses, closest)
        report.evidence.append(
            f"no parametrization, direction or reduction reproduces its outputs; the closest is "
            f"{reading_text(closest)}, off by {closest.result.error:.2g} relative"
        )
    else:
        report.summary = "its output shape matches no reduction of the inputs"


def param_from_name(name: str) -> str | None:
    """The parametrization an argument's name suggests, if any.

    >>> param_from_name("logs_q"), param_from_name("true_log_variance"), param_from_name("sigma")
    ('log_std', 'log_var', 'std')
    """
    n = name.lower().replace("_", "")
    if re.search(r"rho|softplus", n):
        return "softplus"
    if re.search(r"log(var|sigma2|sigmasq|s2)|^lv", n):
        return "log_var"
    if re.search(r"log(std|sigma|scale|sd)|^logs", n):
        return "log_std"
    if n.startswith("log") or n.startswith("ln"):
        return None
    if "var" in n:
        return "var"
    if re.search(r"std|sigma|scale", n):
        return "std"
    return None


def name_notes(report: AuditReport) -> None:
    """A note for each argument whose name says another parametrization than the one read."""
    for name, reading in report.params.items():
        said = param_from_name(name)
        if said is not None and reading in SCALE_WORDS and said != reading:
            report.notes.append(
                f"{name} is read as {SCALE_WORDS[reading]}, though its name says "
                f"{SCALE_WORDS[said]}"
            )


# ----------------------------------------------------------------------------------------------
# floors and caps (free bits, free nats, clamps of the value)
# ----------------------------------------------------------------------------------------------
GRANULARITIES = {
    "element": "each term (free bits per dimension)",
    "distribution": "the KL of each distribution",
    "total": "the reduced value (free nats)",
}


@dataclass
class Clamp:
    """max(KL, floor) and/or min(KL, cap) at one granularity, with the fit it gives."""

    granularity: str
    floor: float | None
    cap: float | None
    result: Fit

    def describe(self) -> str:
        parts = []
        if self.floor is not None:
            parts.append(f"floors {GRANULARITIES[self.granularity]} at {self.floor:.4g}")
        if self.cap is not None:
            parts.append(f"caps {GRANULARITIES[self.granularity]} at {self.cap:.4g}")
        return " and ".join(parts)

    def problem(self) -> Problem:
        """The problem to report: a floor (free bits, free nats) or a cap, with its value."""
        where = "below" if self.floor is not None else "above"
        return Problem(
            "floor" if self.floor is not None else "cap",
            f"it {self.describe()}: {where} that it returns the constant, not the KL (the "
            "gradient there is zero)",
        )


def _clamped(e: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    if lo is not None:
        e = np.maximum(e, lo)
    if hi is not None:
        e = np.minimum(e, hi)
    return e


def clamp_elements(
    elements: np.ndarray, probe: Probe, event: Sequence[str], granularity: str, lo, hi
) -> np.ndarray:
    """The elements of a probe after a floor/cap at ``granularity`` (not ``total``)."""
    e = np.broadcast_to(elements, probe.shape)
    if granularity == "element":
        return _clamped(e, lo, hi)
    axes = tuple(probe.axes.index(s) for s in event if s in probe.axes)
    per = e.sum(axis=axes, keepdims=True)
    n = math.prod(e.shape[a] for a in axes)
    # spread each distribution's clamped KL evenly over its terms: the sums are what count
    return np.broadcast_to(_clamped(per, lo, hi) / n, e.shape)


def saturated_candidates(hypotheses: Sequence[Hypothesis], key) -> list[Hypothesis]:
    """Readings that fit once the probes a floor or cap of the reduced value may sit at are left
    out: those at a repeated output value, or the one with the lowest (highest) output.

    A floor of the reduced value (Dreamer's ``max(mean KL, free_nats)``) returns the same number
    on every probe it acts on; the other probes then say which reading it is.
    """
    out = []
    for h in hypotheses:
        if not key(h) or len(h.probes) < 3:
            continue
        values = [np.asarray(p.output, dtype=np.float64).reshape(-1) for p in h.probes]
        if any(v.size != 1 for v in values):
            continue
        flat = np.concatenate(values)
        drops = [{int(np.argmin(flat))}, {int(np.argmax(flat))}]
        same = [i for i, x in enumerate(flat) if np.sum(np.isclose(flat, x, rtol=1e-12)) > 1]
        if same:
            drops.insert(0, set(same))
        for drop in drops:
            keep = [i for i in range(len(flat)) if i not in drop]
            if len(keep) < 2:
                continue
            r = fit([h.probes[i] for i in keep], [h.elements[i] for i in keep])
            if r is not None and r.ok:
                out.append(h)
                break
    return out


def find_clamp(
    probes: Sequence[Probe],
    elements: Sequence[np.ndarray],
    event: Sequence[str],
    tiny: Sequence[int],
    huge: Sequence[int],
) -> Clamp | None:
    """A floor or a cap that, applied to the KL at some granularity, explains every probe.

    ``tiny`` and ``huge`` index probes (two of each, of different shapes) whose KL is far below
    and far above the usual: for a floor, the huge ones give the reduction (nothing is floored
    there) and the tiny ones the floor's value (everything is); for a cap, the other way round.
    Each granularity is then checked on every probe.
    """
    for use_lo in (True, False):
        base_ids, level_ids = (huge, tiny) if use_lo else (tiny, huge)
        base = fit([probes[i] for i in base_ids], [elements[i] for i in base_ids])
        if base is None or not base.ok:
            continue
        for granularity in ("total", "distribution", "element"):
            level = _level(probes[level_ids[0]], base, event, granularity)
            if level is None or not level > 0:
                continue
            lo, hi = (level, None) if use_lo else (None, level)
            if granularity == "total":
                levels = [_level(probes[i], base, event, granularity) for i in level_ids]
                if not all(x is not None and math.isclose(x, level, rel_tol=1e-9) for x in levels):
                    continue  # a clamp of the total leaves every such probe at the same value
                if all(
                    np.allclose(p.output, _clamped(predict(p, e, base), lo, hi), rtol=10 * p.tol)
                    for p, e in zip(probes, elements, strict=True)
                ):
                    return Clamp(granularity, lo, hi, base)
                continue
            clamped = [
                clamp_elements(e, p, event, granularity, lo, hi)
                for p, e in zip(probes, elements, strict=True)
            ]
            r = fit(probes, clamped)
            if r is not None and r.ok:
                return Clamp(granularity, lo, hi, r)
    return None


def _level(probe: Probe, base: Fit, event: Sequence[str], granularity: str) -> float | None:
    """The clamp value that gives ``probe``'s output when every unit sits at it."""
    out = np.asarray(probe.output, dtype=np.float64)
    if granularity == "total":
        first = float(out.reshape(-1)[0])
        return first if np.allclose(out, first, rtol=1e-9) else None
    ones = np.ones(probe.shape)
    if granularity == "distribution":
        axes = tuple(probe.axes.index(s) for s in event if s in probe.axes)
        ones = ones / math.prod(probe.shape[a] for a in axes)
    unit = float(np.sum(predict(probe, ones, base)))
    return float(np.sum(out)) / unit if unit else None
