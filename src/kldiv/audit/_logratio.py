"""The ``log-ratio`` kind: per-token KL penalties of RLHF (k1, k2, k3 and their variants).

The function sees per-token log-probabilities of sampled tokens: ``logp`` (the policy),
``logp_ref`` (the reference), and optionally ``behavior`` (the policy that sampled the tokens,
for importance-weighted estimators) and a token ``mask``. Probes with chosen log-ratios
δ = logp - logp_ref (and log-weights ω = logp - behavior) identify the per-token value form and
the reduction exactly; autograd identifies the gradient's form separately (straight-through
estimators such as verl's ``k3+`` have the value of one and the gradient of another); probes
far out (8 to 30 nats) find clamps and name their bounds; seeded sampling from known policies
then measures the bias and the spread against the exact KL.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from .._kl import kl as _exact_kl
from ..dists import Categorical
from ..errors import KLDivError, bad
from ._call import parameter_names
from ._fit import Fit, Probe, fit, format_factor
from ._report import Problem
from ._session import SHAPES_2D, Abort, Hypothesis, Session, best_of, factor_suffix, interpret

LR_ROLES = ("logp", "logp_ref", "behavior", "mask")

FORMS = {
    "k1": (lambda d: d, lambda d: np.ones_like(d)),
    "k2": (lambda d: 0.5 * d * d, lambda d: d),
    "k3": (lambda d: np.expm1(-d) + d, lambda d: -np.expm1(-d)),
    "|k1|": (np.abs, np.sign),
    "k3 with the ratio inverted": (lambda d: np.expm1(d) - d, np.expm1),
    "k1 clamped at 0": (lambda d: np.maximum(d, 0.0), lambda d: (d > 0).astype(float)),
}
UNBIASED_FORMS = ("k1", "k3")
WEIGHTS = {
    None: lambda w: np.ones_like(w),
    "w": np.exp,
    "1/w": lambda w: np.exp(-w),
}
WEIGHT_WORDS = {
    "w": "w = exp(logp - behavior)",
    "1/w": "exp(behavior - logp), the importance weight inverted",
}
_BEHAVIOR = re.compile(r"old|behav|rollout|sampl|prox|pi_?0|actor|gen|vllm|inference|mu(_|$)")


def resolve_roles(fn: Any, names: list[str], roles: dict[str, str] | None) -> dict[str, str]:
    """Role -> argument name for a log-ratio function (from ``roles`` or its signature)."""
    if roles:
        out = {}
        for name, role in roles.items():
            role = {"ref": "logp_ref", "behaviour": "behavior"}.get(role, role)
            if role not in LR_ROLES:
                raise bad(f"roles[{name!r}]", "one of " + ", ".join(LR_ROLES), repr(role))
            if role in out:
                raise KLDivError(f"roles: the role {role!r} is given to more than one argument")
            out[role] = name
        rest = [n for n in names if n not in out.values()]
        for role in ("logp", "logp_ref"):
            if role not in out and rest:
                out[role] = rest.pop(0)
        return out
    out = {"logp": names[0], "logp_ref": names[1]}
    required = parameter_names(fn, required=True) or []
    positional = parameter_names(fn) or []
    for n in required[2:] if required[:2] == names[:2] else required:
        if n in out.values():
            continue
        if "mask" in n.lower() and "mask" not in out:
            out["mask"] = n
        elif _BEHAVIOR.search(n.lower()) and "behavior" not in out:
            out["behavior"] = n
    if "behavior" not in out and len(positional) > 2:
        third = positional[2]
        if _BEHAVIOR.search(third.lower()) and third not in out.values():
            out["behavior"] = third
    return out


def _log_pairs(rng: np.random.Generator, delta: np.ndarray, low: bool = False):
    """(logp, logp_ref), both <= 0 (logp <= -1.3 when ``low``), with logp - logp_ref = delta."""
    anchor = rng.uniform(-3.0, -1.3, delta.shape) if low else rng.uniform(-3.0, -0.3, delta.shape)
    logp = np.where(delta >= 0, anchor, anchor + delta)
    return logp, logp - delta


def _token_mask(rng: np.random.Generator, b: int, t: int) -> np.ndarray:
    """Right-padded responses: row i has a random length >= 1 (the first row is full)."""
    lengths = rng.integers(1, t + 1, b)
    lengths[0] = t
    return (np.arange(t)[None, :] < lengths[:, None]).astype(np.float64)


class _Tokens:
    """One probe's per-token inputs."""

    def __init__(self, logp, logref, behavior=None, mask=None):
        self.logp, self.logref, self.behavior, self.mask = logp, logref, behavior, mask

    @property
    def delta(self) -> np.ndarray:
        return self.logp - self.logref

    @property
    def omega(self) -> np.ndarray:
        return np.zeros_like(self.logp) if self.behavior is None else self.logp - self.behavior


def _args(session: Session, tok: _Tokens) -> dict[str, np.ndarray]:
    roles = session.lr_roles
    args = {roles["logp"]: session.round(tok.logp), roles["logp_ref"]: session.round(tok.logref)}
    if "behavior" in roles:
        beh = tok.logp if tok.behavior is None else tok.behavior
        args[roles["behavior"]] = session.round(beh)
    if "mask" in roles:
        args[roles["mask"]] = np.ones(np.shape(tok.logp)) if tok.mask is None else tok.mask
    return args


def _call(session: Session, tok: _Tokens):
    return session.call(_args(session, tok), keywords=True)


def audit_log_ratio(session: Session, roles: dict[str, str] | None = None) -> None:
    report, rng = session.report, session.rng
    session.lr_roles = resolve_roles(session.caller.fn, session.names, roles)
    lr_roles = session.lr_roles
    masked = "mask" in lr_roles
    weighted = "behavior" in lr_roles
    session.mask_name = lr_roles.get("mask")
    moderate: list[Probe] = []
    toks: list[_Tokens] = []
    for b, t in SHAPES_2D:
        d = rng.uniform(-2.5, 2.5, (b, t))
        logp, logref = _log_pairs(rng, d, low=weighted)
        beh = session.round(logp - rng.uniform(-1.2, 1.2, (b, t))) if weighted else None
        tok = _Tokens(session.round(logp), session.round(logref), beh, None)
        if masked:
            tok.mask = _token_mask(rng, b, t)
        call = _call(session, tok)
        sizes = {"B": b, "T": t} | ({"M": int(tok.mask.sum())} if masked else {})
        moderate.append(session.probe(call, ("B", "T"), sizes, tok.mask))
        toks.append(tok)
    hypotheses = []
    for weight in (None, "w", "1/w") if weighted else (None,):
        for name, (g, _) in FORMS.items():
            for per_sequence in (False, True) if masked else (False,):
                elements = []
                for tok, p in zip(toks, moderate, strict=True):
                    e = WEIGHTS[weight](tok.omega) * g(tok.delta)
                    if per_sequence:
                        e = e / np.sum(np.broadcast_to(p.mask, p.shape), axis=1, keepdims=True)
                    elements.append(e)
                hypotheses.append(
                    Hypothesis(
                        name,
                        {},
                        None,
                        moderate,
                        elements,
                        extra={"per_sequence": per_sequence, "weight": weight},
                    )
                )
    best, _ = best_of(hypotheses)
    form = best.label if best is not None else None
    weight = best.extra["weight"] if best is not None else None
    per_sequence = best is not None and best.extra["per_sequence"]
    clamp_text = None
    if best is not None:
        clamp_text = _extremes(session, best, masked)
    if best is not None:
        reduction, factor, notes = interpret(best.result, ("B", "T"), (), mask=masked)
        normalizer = _normalizer(best.result)
        if per_sequence:
            notes = []
            factor = format_factor(best.result.k, [s for s in best.result.denominator if s != "B"])
            reduction = "sequence-mean" if "B" in best.result.denominator else "sequence-sum"
            normalizer = _normalizer(
                Fit(
                    best.result.kept,
                    ("M",) if "B" in best.result.denominator else ("T",),
                    best.result.k,
                    0.0,
                    True,
                )
            )
    else:  # an unknown per-token form: the reduction from repeating the inputs
        dup = _duplication(session)
        reduction, factor, notes = interpret(dup, ("B", "T"), (), mask=masked)
        normalizer = _normalizer(dup)
    stats = _sample_policies(session, normalizer, weighted)
    worst = max(stats, key=lambda s: abs(s["bias"]) / s["se"] if s["se"] > 0 else 0.0)
    unbiased = all(abs(s["bias"]) <= 4.0 * s["se"] + 1e-9 for s in stats)
    shown = _form_name(form, weight) if form else None
    report.estimator = shown
    report.reduction, report.factor = reduction, factor
    report.notes.extend(notes)
    report.std = stats[1]["sd_token"]
    sampler = "behaviour policy" if weighted else "policy"
    for s in stats:
        report.evidence.append(
            f"policies '{s['name']}' (KL {s['kl']:.4g} per token, {s['tokens']} tokens sampled "
            f"from the {sampler}): mean {s['mean']:.4g} ± {s['se']:.2g}, sd per token "
            f"{s['sd_token']:.3g}"
        )
    if best is not None:
        report.evidence.append(
            f"on {len(SHAPES_2D)} probes with chosen log-ratios it equals {shown} "
            f"(relative error {best.result.error:.1g})"
        )
    right_weight = weight == "w" if weighted else weight is None
    negative = best is not None and best.result.k < 0
    if negative:
        report.verdict = "not-kl"
        report.bias = worst["bias"]
        report.summary = f"its expectation is {factor} times KL(p || p_ref): the sign is flipped"
        report.problems.append(Problem("negative", "it estimates minus the KL (sign flipped)"))
    elif form in UNBIASED_FORMS and clamp_text is None and right_weight:
        report.verdict = "unbiased-estimator"
        report.bias = 0.0
        scaled = "" if factor == "1" else f" times {factor}"
        off = " off-policy (importance-weighted)" if weighted else ""
        report.summary = f"an unbiased estimate of KL(p || p_ref){scaled}{off} ({shown})"
        if factor != "1":
            report.problems.append(
                Problem("scaled", f"it multiplies the per-token estimate by {factor}")
            )
        if not unbiased:
            report.notes.append(
                f"sampling showed a deviation of {worst['bias']:+.3g} on '{worst['name']}' "
                "(chance, given the heavy tail of the estimator)"
            )
    else:
        report.verdict = "biased-estimator" if form is not None else _by_bias(stats)
        report.bias = worst["bias"]
        if clamp_text:
            report.problems.append(Problem("clipping", clamp_text))
        if form is not None and form not in UNBIASED_FORMS:
            report.problems.append(
                Problem("biased", f"{form} is biased: E[{form}] ≠ KL(p || p_ref)")
            )
        if weighted and form is not None and not right_weight:
            report.problems.append(
                Problem(
                    "importance-weight",
                    "the tokens come from the behaviour policy, but it "
                    + (
                        "does not weight them by exp(logp - behavior)"
                        if weight is None
                        else "weights them by exp(behavior - logp), the inverse of the "
                        "importance weight"
                    ),
                )
            )
        if factor not in (None, "1"):
            report.problems.append(
                Problem("scaled", f"it multiplies the per-token estimate by {factor}")
            )
        report.summary = (
            f"a biased estimate of KL(p || p_ref) (bias {worst['bias']:+.3g} per token on "
            f"'{worst['name']}')"
        )
    if clamp_text:
        report.clamp = clamp_text
    if reduction == "sum":
        report.notes.append(
            "it sums over the batch and the tokens: the penalty grows with the batch size"
        )
    if best is not None:
        _gradients(session, best, toks[0], moderate[0], form, weight)
    lp, lr = lr_roles["logp"], lr_roles["logp_ref"]
    if form in ("k1", "k2", "k3") and reduction is not None and not weighted:
        red = f', reduction="{reduction}"'
        if masked:
            red = f", mask={lr_roles['mask']}" + red
        if per_sequence:
            red = f', mask={lr_roles["mask"]}, reduction="none")  # then per-sequence means'
        if clamp_text is None and not per_sequence:
            report.equivalent = f"kldiv.mc.{form}({lp}, {lr}{red}){factor_suffix(factor or '1')}"
    if report.verdict != "unbiased-estimator":
        report.notes.append(
            f'kldiv.mc.k3({lp}, {lr}, reduction="mean") is unbiased, with low variance when the '
            "policies are close (kldiv.mc.k1 when they are far apart)"
            + ("; off-policy, multiply each token by exp(logp - behavior)" if weighted else "")
        )


def _form_name(form: str, weight: str | None) -> str:
    return form if weight is None else f"{'w' if weight == 'w' else '(1/w)'}·{form}"


# ----------------------------------------------------------------------------------------------
# clamps
# ----------------------------------------------------------------------------------------------
def _extremes(session: Session, best: Hypothesis, masked: bool) -> str | None:
    """The same form far out (8 to 18 nats): a clamp shows here, then its bounds are named."""
    rng = session.rng
    extreme, ext_deltas = [], []
    for b, t in SHAPES_2D[:2]:
        sign = np.where(rng.random((b, t)) < 0.5, -1.0, 1.0)
        d = sign * rng.uniform(8.0, 18.0, (b, t))
        logp, logref = _log_pairs(rng, d)
        tok = _Tokens(session.round(logp), session.round(logref))
        try:
            call = _call(session, tok)
        except Abort as exc:
            return f"it fails for large log-ratios ({exc.message})"
        sizes = {"B": b, "T": t} | ({"M": b * t} if masked else {})
        extreme.append(session.probe(call, ("B", "T"), sizes))
        ext_deltas.append(tok.delta)
    g = FORMS[best.label][0]
    per_seq = best.extra["per_sequence"]
    elements = [g(d) / (d.shape[1] if per_seq else 1) for d in ext_deltas]
    r = fit(extreme, elements)
    if r is not None and r.ok and abs(r.k - best.result.k) <= 1e-3 * abs(best.result.k):
        return None
    bounds = _clamp_bounds(session, best, masked)
    return (
        f"it equals {best.label} on probes with |logp - logp_ref| up to 2.5 but departs from it "
        f"between 8 and 18 nats: {bounds}, which biases the estimate"
    )


LADDER = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0])


def _clamp_bounds(session: Session, best: Hypothesis, masked: bool) -> str:
    """Where the per-token value stops following the form, on each side, and at what value."""
    g = FORMS[best.label][0]
    per_token = _normalizer(best.result)
    b, t = 2, 3
    parts = []
    for sign, side in ((-1.0, "logp_ref - logp"), (1.0, "logp - logp_ref")):
        values = []
        for x in LADDER:
            d = np.full((b, t), sign * x)
            logp, logref = _log_pairs(session.rng, d)
            try:
                y = _call(session, _Tokens(logp, logref)).output
            except Abort:
                values.append(math.nan)
                continue
            mask_len = t if best.extra["per_sequence"] else 1
            values.append(per_token(y, {"B": b, "T": t}) * mask_len)
        v = np.asarray(values)
        want = best.result.k * g(sign * LADDER)
        off = ~np.isclose(v, want, rtol=1e-6, atol=1e-9)
        if not off.any():
            continue
        i = int(np.argmax(off))
        tail = v[i:]
        if np.all(np.isfinite(tail)) and np.allclose(tail, tail[0], rtol=1e-9, atol=1e-12):
            c = float(tail[0])
            where = _solve(
                lambda x, sign=sign, c=c: best.result.k * float(g(np.asarray(sign * x))) - c,
                LADDER[i - 1] if i else 0.0,
                LADDER[i],
            )
            parts.append(f"the per-token value stops at {c:.6g} once {side} exceeds {where:.4g}")
        else:
            parts.append(
                f"the per-token value departs from {best.label} once {side} exceeds "
                f"{LADDER[i - 1] if i else 0.0:g}"
            )
    if not parts:
        return "a clamp or clip"
    return "it clamps: " + "; ".join(parts)


def _solve(f, lo: float, hi: float) -> float:
    flo, fhi = f(lo), f(hi)
    if not (np.isfinite(flo) and np.isfinite(fhi)) or flo * fhi > 0:
        return hi
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        fm = f(mid)
        if fm * flo > 0:
            lo, flo = mid, fm
        else:
            hi = mid
    x = 0.5 * (lo + hi)
    r = round(x)
    return float(r) if abs(x - r) < 1e-6 * max(1.0, abs(x)) else x


# ----------------------------------------------------------------------------------------------
# gradients: the estimator a straight-through or importance-weighted form differentiates
# ----------------------------------------------------------------------------------------------
def _gradients(session, best: Hypothesis, tok: _Tokens, probe: Probe, form, weight) -> None:
    caller = session.caller
    if caller.backend.name == "numpy" or session.random:
        return
    args = _args(session, tok)
    out = session.call(args, keywords=True).output
    try:
        grads = caller.gradients(args, np.ones(np.shape(out)), keywords=True)
    except Exception as exc:  # the user's function under autograd
        session.report.problems.append(
            Problem("gradient-fails", f"autograd through the function fails: {exc}")
        )
        return
    got = grads[session.lr_roles["logp"]]
    d, w = tok.delta, tok.omega
    n = math.prod(probe.sizes[s] for s in best.result.denominator)
    c = best.result.k / n * np.ones_like(d)
    if probe.mask is not None:
        c = c * np.broadcast_to(probe.mask, probe.shape)
    if best.extra["per_sequence"]:
        c = c / np.sum(np.broadcast_to(probe.mask, probe.shape), axis=1, keepdims=True)
    candidates = {}
    for name, (g, dg) in FORMS.items():
        for wname in (None, "w", "1/w") if "behavior" in session.lr_roles else (None,):
            wv = WEIGHTS[wname](w)
            label = _form_name(name, wname)
            if wname is None:
                candidates[label] = wv * dg(d)
            else:
                sign = 1.0 if wname == "w" else -1.0
                candidates[label + " (the weight's gradient stopped)"] = wv * dg(d)
                candidates[label + " (the gradient through the weight too)"] = wv * (
                    dg(d) + sign * g(d)
                )
    scale = max(float(np.max(np.abs(got))), 1e-300)
    errors = {k: float(np.max(np.abs(got - c * v))) / scale for k, v in candidates.items()}
    found = min(errors, key=errors.get)
    tol = 1e-6 if caller.backend.dtype_name == "float64" else 2e-3
    value_name = _form_name(form, weight)
    if errors[found] > tol:
        if float(np.max(np.abs(got))) == 0.0:
            session.report.notes.append("it has no gradient with respect to logp (detached)")
            session.report.gradient_estimator = "none"
        else:
            session.report.notes.append(
                "its gradient with respect to logp follows none of k1, k2, k3 (relative "
                f"error {errors[found]:.2g} for the nearest, {found})"
            )
        return
    session.report.gradient_estimator = found
    base = found.split(" (")[0]
    if base != value_name:
        session.report.notes.append(
            f"straight-through: its value is {value_name}'s and its gradient {base}'s"
        )
        if found.startswith(("k1", "k2", "k3")):
            session.report.notes.append(_gradient_note(base))
    elif weight is None and form in ("k1", "k2", "k3"):
        session.report.notes.append(_gradient_note(form))
    if weight == "w":
        if "through the weight" in found:
            session.report.notes.append(
                "the weight's gradient is kept: as a loss, its expected gradient is that of "
                "E_p[" + form + "], i.e. of KL(p || p_ref) for k1 and k3"
            )
        else:
            session.report.notes.append(
                f"the weight's gradient is stopped: as a loss, its expected gradient is that of "
                f"on-policy {base.split('·')[-1]} with the samples held fixed"
            )
    session.report.evidence.append(
        f"{caller.backend.name} autograd: the gradient with respect to logp is {found}'s "
        f"(relative error {errors[found]:.1g})"
    )


def _gradient_note(form: str) -> str:
    return {
        "k1": "as a loss with the samples held fixed, k1's expected gradient is zero",
        "k2": "as a loss, k2's gradient is that of KL(p || p_ref) (its value is biased)",
        "k3": "as a loss, k3's expected gradient is that of KL(p_ref || p), the reverse KL",
    }.get(form, "")


# ----------------------------------------------------------------------------------------------
# reductions and sampling
# ----------------------------------------------------------------------------------------------
def _duplication(session: Session) -> Any:
    """The reduction of a log-ratio function, from repeating its inputs along B and along T."""
    rng = session.rng
    b, t = SHAPES_2D[0]
    logp, logref = _log_pairs(rng, rng.uniform(0.2, 1.5, (b, t)))
    base = _call(session, _Tokens(logp, logref)).output
    den = []
    for axis, sym in ((0, "B"), (1, "T")):
        rep = [np.concatenate([x, x], axis=axis) for x in (logp, logref)]
        out = _call(session, _Tokens(rep[0], rep[1])).output
        if out.shape == base.shape and np.allclose(out, base, rtol=1e-4):
            den.append(sym)
    if session.mask_name is not None and den == ["B", "T"]:
        den = ["M"]
    kept = ("B", "T")[: base.ndim] if base.ndim else ()
    return Fit(kept, tuple(den), 1.0, 0.0, True)


def _by_bias(stats: list[dict[str, Any]]) -> str:
    rel = max(abs(s["bias"]) / max(s["kl"], 1e-12) for s in stats)
    return "biased-estimator" if rel < 5.0 else "not-kl"


def _normalizer(result: Any) -> Any:
    """Per call: the output divided by this is the mean of the per-token form."""

    def per_token(y: np.ndarray, sizes: dict[str, int]) -> float:
        sizes = sizes | {"M": sizes["B"] * sizes["T"]}  # sampling runs unmasked
        n = math.prod(sizes[s] for s in result.denominator)
        reduced = math.prod(sizes[s] for s in ("B", "T") if s not in result.kept)
        return float(np.mean(y)) * n / reduced  # the factor k stays in: bias is against the KL

    return per_token


def _policies(rng: np.random.Generator, vocab: int):
    lp = rng.normal(0.0, 1.0, vocab)
    close = lp + rng.normal(0.0, 0.3, vocab)
    far = lp + rng.normal(0.0, 1.2, vocab)
    rare = lp.copy()
    i = int(np.argsort(lp)[-4])  # a token p gives a few percent
    rare[i] = lp[i] - 16.0
    behavior = lp + rng.normal(0.0, 0.5, vocab)
    return [
        ("close", lp, close, behavior),
        ("far", lp, far, behavior),
        ("rare tokens", lp, rare, behavior),
    ]


def _sample_policies(session: Session, per_token: Any, weighted: bool) -> list[dict[str, Any]]:
    rng = session.rng
    vocab, b, t, reps = 24, 8, 64, 40
    out = []
    for name, lp, lr, lb in _policies(rng, vocab):
        logp_all = lp - np.logaddexp.reduce(lp)
        logr_all = lr - np.logaddexp.reduce(lr)
        logb_all = lb - np.logaddexp.reduce(lb)
        exact = float(_exact_kl(Categorical(log_probs=logp_all), Categorical(log_probs=logr_all)))
        sampler = np.exp(logb_all if weighted else logp_all)
        values = []
        for _ in range(reps):
            tokens = rng.choice(vocab, size=(b, t), p=sampler / sampler.sum())
            tok = _Tokens(
                logp_all[tokens], logr_all[tokens], logb_all[tokens] if weighted else None
            )
            y = _call(session, tok).output
            values.append(per_token(y, {"B": b, "T": t}))
        v = np.asarray(values)
        mean, sd = float(v.mean()), float(v.std(ddof=1))
        out.append(
            {
                "name": name,
                "kl": exact,
                "mean": mean,
                "bias": mean - exact,
                "se": sd / math.sqrt(reps),
                "sd_token": sd * math.sqrt(b * t),
                "tokens": b * t * reps,
            }
        )
    return out
