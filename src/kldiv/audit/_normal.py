"""The ``normal-standard`` and ``normal`` kinds: closed-form Gaussian KL functions.

Probes: (B, D) in four shapes and (B, C, T) in four more, read with the latent axis on axis 1
(VITS, espnet) or last; a reduction is found that explains both ranks (``batchmean``, the
total over distributions divided by B, differs from ``mean`` at rank 3). Each scale argument is
read as a std, a variance, a log std, a log-variance or softplus(ρ) of a std; the arguments'
order (loc, scale) or (scale, loc), (loc_a, loc_b, s_a, s_b), ... comes from their names, or is
searched when the names say nothing. Then probes whose KL is tiny or huge (a floor: free bits,
free nats; a cap) and, for torch and JAX, a gradient check.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .._kl import kl as _exact_kl
from ..dists import Normal
from ._fit import Fit, Probe, fit
from ._report import Problem
from ._session import (
    NOISY_2D,
    NOISY_3D,
    SCALES,
    SHAPES_2D,
    SHAPES_3D,
    Abort,
    Hypothesis,
    Session,
    best_of,
    check_gradients,
    factor_suffix,
    find_clamp,
    name_notes,
    not_kl,
    read_reduction,
    reading_text,
    reduce_like,
    saturated_candidates,
    std_from,
    summary_exact,
    verdict_for,
)

ROLES = ("loc_a", "s_a", "loc_b", "s_b")
LABELLINGS = {"BTD": ("B", "T", "D"), "BDT": ("B", "D", "T")}  # ties go to the first


def _kind_of_name(name: str) -> str | None:
    """``loc`` or ``scale`` when an argument's name says which, else None."""
    n = name.lower()
    if re.search(r"var|std|sigma|scale|rho|logs|lv|^s(_|$|\d)|^log", n):
        return "scale"
    if re.search(r"mu|mean|loc|^m(_|$|\d)|^z", n):
        return "loc"
    return None


def argument_orders(names: list[str], two_sided: bool) -> tuple[list[dict[str, str]], bool]:
    """Candidate maps from roles (loc_a, s_a, loc_b, s_b) to argument names, and whether the
    names decided it."""
    n = 4 if two_sided else 2
    kinds = [_kind_of_name(x) for x in names[:n]]
    patterns = (
        [(0, 1, 2, 3), (0, 2, 1, 3), (1, 0, 3, 2), (2, 0, 3, 1)] if two_sided else [(0, 1), (1, 0)]
    )
    orders = [dict(zip(ROLES, (names[i] for i in pat), strict=False)) for pat in patterns]
    for order in orders:
        ok = all(
            kinds[names.index(order[r])] in (None, "loc" if r.startswith("loc") else "scale")
            for r in order
        )
        if ok and None not in kinds:
            return [order], True
    named = [
        o
        for o in orders
        if all(
            kinds[names.index(o[r])] in (None, "loc" if r.startswith("loc") else "scale") for r in o
        )
    ]
    return (named or orders[:1]) + [o for o in orders if o not in named], False


def _normal(loc: Any, s: Any, param: str) -> Normal:
    return Normal(loc, std=std_from(param, s))


def _from_std(param: str, sigma: np.ndarray) -> np.ndarray:
    """The argument value that, read as ``param``, gives the standard deviation ``sigma``."""
    return {
        "std": lambda x: x,
        "var": lambda x: x * x,
        "log_std": np.log,
        "log_var": lambda x: 2 * np.log(x),
        "softplus": lambda x: x + np.log(-np.expm1(-x)),
    }[param](sigma)


def audit_normal(session: Session, two_sided: bool) -> None:
    report, names, rng = session.report, session.names, session.rng
    orders, decisive = argument_orders(names, two_sided)
    locs = {orders[0]["loc_a"]} | ({orders[0]["loc_b"]} if two_sided else set())
    if not decisive:
        locs = set()  # any argument may be a scale: every value must be valid as one

    def draw(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        args = {}
        for name in names[: 4 if two_sided else 2]:
            sh = () if name in session.caller.scalars else shape
            lo, hi = (-1.5, 1.5) if name in locs else (0.4, 2.0)
            args[name] = session.round(rng.uniform(lo, hi, sh))
        return args

    first, first_rank = _first_call(session, draw, two_sided)
    random_fn = session.random
    shapes_2d = NOISY_2D if random_fn else SHAPES_2D
    shapes_3d = NOISY_3D if random_fn else SHAPES_3D
    raw2, probes2, rank2_error = [], [], None
    if first_rank == 2:
        raw2 = (
            [draw(s) for s in shapes_2d]
            if random_fn
            else [first] + [draw(s) for s in shapes_2d[1:]]
        )
        for args, (b, d) in zip(raw2, shapes_2d, strict=True):
            call = session.call(args)
            probes2.append(session.probe(call, ("B", "D"), {"B": b, "D": d, "T": 1}))
    else:
        rank2_error = first_rank
    raw3, outs3 = [], []
    rank3_error = None
    try:
        for shape in shapes_3d:
            args = draw(shape)
            outs3.append(session.call(args))
            raw3.append(args)
    except Abort as exc:
        if exc.code not in ("raises", "nan") or not raw2:
            raise
        rank3_error = exc.message
        raw3, outs3 = [], []

    def probes3(labelling: str) -> list[Probe]:
        axes = LABELLINGS[labelling]
        out = []
        for call, args in zip(outs3, raw3, strict=True):
            shape = np.shape(next(v for k, v in args.items() if k not in session.caller.scalars))
            out.append(session.probe(call, axes, dict(zip(axes, shape, strict=True))))
        return out

    by_labelling = {lab: probes3(lab) for lab in LABELLINGS} if raw3 else {}
    combos = (
        [(pa, pb, d) for pa in SCALES for pb in SCALES for d in ("a||b", "b||a")]
        if two_sided
        else [(pa, None, "a||b") for pa in SCALES]
    )
    hypotheses: list[Hypothesis] = []
    for oi, order in enumerate(orders):
        for pa, pb, direction in combos:
            el2 = [_elements(args, order, pa, pb, direction, two_sided) for args in raw2]
            el3 = [_elements(args, order, pa, pb, direction, two_sided) for args in raw3]
            params = {order["s_a"]: pa} | ({order["s_b"]: pb} if two_sided else {})
            shown = direction if two_sided else None
            base = {"order": order, "pa": pa, "pb": pb, "oi": oi}
            for lab, p3 in by_labelling.items():
                hypotheses.append(
                    Hypothesis(
                        f"{pa}/{pb}/{direction}/{lab}",
                        params,
                        shown,
                        probes2 + p3,
                        el2 + el3,
                        extra=base | {"rank": oi if raw2 else len(orders) + oi, "labelling": lab},
                    )
                )
            if raw2:
                hypotheses.append(
                    Hypothesis(
                        f"{pa}/{pb}/{direction}/2d",
                        params,
                        shown,
                        probes2,
                        el2,
                        extra=base | {"rank": len(orders) + oi, "labelling": None},
                    )
                )
    best, closest = best_of(hypotheses)
    if best is not None:  # equally good readings of the axes: the one with factor 1, if any
        example = ("B", "T") if best.extra["labelling"] else ("B",)
        same = [
            h
            for h in hypotheses
            if h.result is not None and h.result.ok and h.extra["rank"] == best.extra["rank"]
        ]
        plain = [
            h for h in same if read_reduction(h.result, example, ("D",), mask=False).factor == "1"
        ]
        if (
            plain
            and plain[0] is not best
            and read_reduction(best.result, example, ("D",), mask=False).factor != "1"
        ):
            best = plain[0]
    if best is not None and best.extra["labelling"] is None and raw3:
        report.notes.append(
            "at rank 3 (B x C x T) its outputs follow no single reading of the axes: the "
            "reading below holds for (B, D) inputs"
        )
    if rank3_error:
        report.notes.append(f"it could not be probed at rank 3 ({rank3_error})")
    if rank2_error:
        report.notes.append(
            f"it fails on (B, D) inputs ({rank2_error}); the reading below is from (B, C, T) ones"
        )
    if best is not None and random_fn and raw2 and not _verify_noisy(session, best, two_sided):
        best = None  # proportional on the usual probes, not on near and far ones: biased
    clamp = None
    if best is None and not random_fn and raw2:
        best, clamp = _search_clamp(session, hypotheses, probes2, raw2, two_sided)
    elif best is not None and not random_fn and raw2:
        clamp = _check_extremes(session, best, probes2, raw2, two_sided)
    if best is None:
        if random_fn:
            _biased_estimate(session, hypotheses, closest, probes2, raw2, two_sided)
            return
        alternatives = _symmetric_alternatives(
            raw2 or raw3, probes2 or by_labelling.get("BDT", []), orders[0], two_sided
        )
        alt, _ = best_of(alternatives)
        not_kl(session, alt, closest, ("B",), ("D",), hypotheses)
        _check_at_equality_normal(session, closest, two_sided)
        return
    _report_reading(session, best, clamp, two_sided, raw2 or raw3, probes2)


def _first_call(session: Session, draw, two_sided: bool):
    """The first probe, called: (its arguments, 2) at rank 2; if that fails, the same with the
    prior's arguments as Python floats; then ``(None, message)`` when only rank 3 runs."""
    names = session.names
    candidates = [set()]
    if two_sided:
        candidates += [{names[3]}, {names[2], names[3]}]
    error = None
    for scalars in candidates:
        session.caller.scalars = set(scalars)
        args = draw(SHAPES_2D[0])
        try:
            session.detect_randomness(args)
        except Abort as exc:
            if exc.code not in ("raises", "wrong-backend"):
                raise
            error = error or exc
            continue
        if scalars:
            session.report.notes.append(
                "it takes " + " and ".join(sorted(scalars)) + " as Python floats (a fixed prior)"
            )
        return args, 2
    session.caller.scalars = set()
    assert error is not None
    try:
        session.detect_randomness(draw(SHAPES_3D[0]))
    except Abort:
        raise error from None
    return None, error.message.replace("the function failed on a valid probe: ", "")


def _elements(args, order, pa, pb, direction, two_sided) -> np.ndarray:
    a = _normal(args[order["loc_a"]], args[order["s_a"]], pa)
    if two_sided:
        b = _normal(args[order["loc_b"]], args[order["s_b"]], pb)
    else:
        b = Normal.standard()
    first, second = (a, b) if direction == "a||b" else (b, a)
    shape = np.broadcast_shapes(*(np.shape(v) for v in args.values()))
    return np.broadcast_to(np.asarray(_exact_kl(first, second)), shape)


def _extreme_args(session: Session, h: Hypothesis, two_sided: bool, size: str, shape):
    """Arguments of a probe whose KL under ``h``'s reading is tiny or huge."""
    rng, order = session.rng, h.extra["order"]
    scalars = session.caller.scalars
    b_shape = () if order.get("s_b") in scalars else shape
    if size in ("near", "far"):  # for estimators: KL ~0.01 and ~5 per element
        step, ratio = (0.15, 0.08) if size == "near" else (2.5, 1.2)
        mu_a = rng.uniform(-1.0, 1.0, shape) if two_sided else step * rng.choice([-1.0, 1.0], shape)
        sd_a = (
            rng.uniform(0.6, 1.6, shape)
            if two_sided
            else np.exp(ratio * rng.choice([-1.0, 1.0], shape))
        )
        mu_b = mu_a + step * rng.choice([-1.0, 1.0], shape)
        sd_b = sd_a * np.exp(ratio * rng.choice([-1.0, 1.0], shape))
        if not two_sided:
            mu_b = sd_b = None
    elif size == "tiny":
        mu_a = rng.uniform(-1.0, 1.0, shape)
        sd_a = rng.uniform(0.6, 1.6, shape)
        if not two_sided:
            mu_a, sd_a = 1e-3 * rng.standard_normal(shape), 1.0 + 1e-3 * rng.standard_normal(shape)
            mu_b = sd_b = None
        else:
            mu_b = mu_a + 1e-3 * rng.standard_normal(shape)
            sd_b = sd_a * (1.0 + 1e-3 * rng.standard_normal(shape))
            if b_shape == ():
                mu_a = mu_a * 0 + rng.uniform(-1, 1)
                sd_a = sd_a * 0 + rng.uniform(0.6, 1.6)
                mu_b, sd_b = mu_a.flat[0] + 1e-3, sd_a.flat[0] * 1.001
    else:
        mu_a = rng.uniform(6.0, 10.0, shape) * rng.choice([-1.0, 1.0], shape)
        sd_a = rng.uniform(3.0, 8.0, shape)
        mu_b = rng.uniform(-0.5, 0.5, b_shape)
        sd_b = rng.uniform(0.2, 0.4, b_shape)
    args = {order["loc_a"]: mu_a, order["s_a"]: _from_std(h.extra["pa"], sd_a)}
    if two_sided:
        args[order["loc_b"]] = np.asarray(mu_b)
        args[order["s_b"]] = np.asarray(_from_std(h.extra["pb"], np.asarray(sd_b)))
    return {
        k: session.round(np.asarray(args[k], dtype=np.float64)) for k in session.names[: len(args)]
    }


def _extreme_probes(session, h, two_sided):
    probes, raws, tiny, huge = [], [], [], []
    for size, ids in (("tiny", tiny), ("huge", huge)):
        for b, d in (SHAPES_2D[0], SHAPES_2D[2]):  # shapes already seen: no new compiles
            args = _extreme_args(session, h, two_sided, size, (b, d))
            call = session.call(args)
            ids.append(len(probes))
            probes.append(session.probe(call, ("B", "D"), {"B": b, "D": d, "T": 1}))
            raws.append(args)
    return probes, raws, tiny, huge


def _verify_noisy(session: Session, best: Hypothesis, two_sided: bool) -> bool:
    """A function that samples inside, proportional to a KL on the usual probes: is it still,
    where the KL is small (0.01 per element) and large (5)? ``|log q - log p|`` is not."""
    probes, raws = [], []
    try:
        for size, (b, d) in (("near", NOISY_2D[0]), ("far", NOISY_2D[1])):
            args = _extreme_args(session, best, two_sided, size, (b, d))
            probes.append(session.probe(session.call(args), ("B", "D"), {"B": b, "D": d, "T": 1}))
            raws.append(args)
    except Abort as exc:
        if exc.code not in ("nan", "raises"):
            raise
        return False
    r = fit(best.probes + probes, best.elements + _hyp_elements(best, raws, two_sided))
    if r is not None and r.ok:
        session.report.evidence.append(
            "it stays proportional to the KL on probes with a KL of about 0.01 and 5 per element"
        )
        return True
    session.report.notes.append(
        f"on the usual probes its mean is close to the KL with {reading_text(best)}, but not "
        "where the KL is small or large: its expectation is not proportional to the KL"
    )
    return False


def _hyp_elements(h: Hypothesis, raws, two_sided):
    direction = h.direction or "a||b"
    return [
        _elements(a, h.extra["order"], h.extra["pa"], h.extra["pb"], direction, two_sided)
        for a in raws
    ]


def _check_extremes(session: Session, best: Hypothesis, probes2, raw2, two_sided):
    """Tiny and huge KLs under the reading found: a floor or a cap shows here."""
    try:
        ext, raws, tiny, huge = _extreme_probes(session, best, two_sided)
    except Abort as exc:
        if exc.code not in ("nan", "raises"):
            raise
        session.report.notes.append(f"it fails on probes with a tiny or huge KL ({exc.message})")
        return None
    el = _hyp_elements(best, raws, two_sided)
    result = fit(probes2 + ext, _hyp_elements(best, raw2, two_sided) + el)
    if result is not None and result.ok:
        session.report.evidence.append(
            "it stays exact on probes with a KL of about 1e-6 and of about 100 per element"
        )
        return None
    n = len(probes2)
    clamp = find_clamp(
        probes2 + ext,
        _hyp_elements(best, raw2, two_sided) + el,
        ("D",),
        [n + i for i in tiny],
        [n + i for i in huge],
    )
    if clamp is None:
        session.report.problems.append(
            Problem(
                "extreme-values",
                "it departs from the KL on probes with a tiny (1e-6) or a huge (100 per element) "
                "KL: a clamp, a floor or an epsilon that bites at extremes",
            )
        )
    return clamp


def _search_clamp(session, hypotheses, probes2, raw2, two_sided):
    """No reading fits: is one of the closest floored or capped (free bits, free nats)?"""
    near = sorted(
        (h for h in hypotheses if h.result is not None and h.extra["labelling"] is None),
        key=lambda h: h.result.error,
    )[:3]
    near += [h for h in saturated_candidates(hypotheses, lambda h: True)[:4] if h not in near]
    for h in near:
        try:
            ext, raws, tiny, huge = _extreme_probes(session, h, two_sided)
        except Abort as exc:
            if exc.code not in ("nan", "raises"):
                raise
            continue
        n = len(probes2)
        elements = _hyp_elements(h, raw2, two_sided) + _hyp_elements(h, raws, two_sided)
        clamp = find_clamp(
            probes2 + ext, elements, ("D",), [n + i for i in tiny], [n + i for i in huge]
        )
        if clamp is not None:  # read on the (B, D) probes: the clamp search uses those
            found = Hypothesis(
                h.label,
                h.params,
                h.direction,
                probes2 + ext,
                elements,
                extra={**h.extra, "labelling": None},
                result=clamp.result,
            )
            return found, clamp
    return None, None


def _report_reading(session: Session, best: Hypothesis, clamp, two_sided, raw2, probes2) -> None:
    report = session.report
    result = best.result
    assert result is not None
    order = best.extra["order"]
    labelling = best.extra["labelling"]
    example = ("B", "T") if labelling else ("B",)
    report.params = dict(best.params)
    report.direction = best.direction if two_sided else None
    red = read_reduction(result, example, ("D",), mask=False)
    session.final_probes = list(best.probes)
    if red.reduction is None or ("D" in result.kept and "B" not in result.kept):
        report.verdict = "not-kl"
        report.closest = "the KL per latent dimension, summed over the batch"
        report.summary = "returns one number per latent dimension or position, not per example"
        return
    reduction, factor = red.reduction, red.factor
    report.reduction, report.factor = reduction, factor
    report.notes.extend(red.notes)
    name_notes(report)
    random_fn = session.random
    if random_fn:
        report.verdict = "unbiased-estimator" if result.k > 0 else "not-kl"
        report.bias = 0.0
        scaled = "" if factor == "1" else f" times {factor}"
        report.summary = f"samples inside; its expectation is the KL{scaled} (an unbiased estimate)"
        report.std = _spread(session, raw2[0])
        if factor != "1":
            report.problems.append(Problem("scaled", f"its expectation is the KL times {factor}"))
    else:
        report.verdict = verdict_for(result.k, factor)
    elementwise = "D" in result.kept
    if elementwise:
        report.notes.append(
            "it returns one KL per element (each the exact KL of a scalar Gaussian): the KL of the "
            "diagonal Gaussian is their sum over the latent axis"
        )
    if labelling == "BDT":
        event = "" if elementwise else ", event_axis=1"
    else:
        event = "" if elementwise else ", event_axis=-1"
    if red.summed:
        event = ", event_axis=(1, 2)" if labelling else event
        report.notes.append("it sums over the time axis as well as the latent axis")
    redtxt = "" if reduction == "none" else f', reduction="{reduction}"'
    p_spec = _spec(order["loc_a"], order["s_a"], best.params[order["s_a"]])
    if two_sided:
        q_spec = _spec(order["loc_b"], order["s_b"], best.params[order["s_b"]])
        if best.direction == "b||a":
            p_spec, q_spec = q_spec, p_spec
    else:
        q_spec = "kldiv.Normal.standard()"
    report.equivalent = f"kldiv.kl({p_spec}, {q_spec}{event}{redtxt}){factor_suffix(factor)}"
    if random_fn:
        report.equivalent += "  (exact: no sampling needed)"
    if clamp is not None:
        report.problems.append(clamp.problem())
        report.equivalent = None
        report.summary = f"computes the KL, but {clamp.describe()}"
    elif not random_fn and report.verdict != "not-kl":
        report.summary = summary_exact(report)
    ranks = "(B x D) and (B x C x T)" if labelling else "(B x D)"
    report.evidence.append(
        f"{len(best.probes)} probes of ranks {ranks}: every output equals the exact KL with this "
        f"reading to {result.error:.1g} relative"
        + (
            f" ({'latent on axis 1' if labelling == 'BDT' else 'latent last'} at rank 3)"
            if labelling
            else ""
        )
    )
    if session.caller.scalars:
        report.notes.append("kldiv broadcasts a float scale or loc like an array")
    if clamp is None and not random_fn and probes2:
        _gradient_check(session, best, result, raw2[0], probes2[0], two_sided)


def _spec(loc: str, s: str, param: str) -> str:
    if param == "softplus":
        return f"kldiv.Normal({loc}, std=softplus({s}))"
    return f"kldiv.Normal({loc}, {param}={s})"


def _gradient_check(session, best, result, args, probe, two_sided) -> None:
    order = best.extra["order"]
    pa, pb = best.extra["pa"], best.extra["pb"]
    fixed = {k: v for k, v in args.items() if k in session.caller.scalars}

    def reference(natives: dict[str, Any]) -> Any:
        from .._xp import xp_of

        vals = {**{k: float(np.asarray(v).reshape(-1)[0]) for k, v in fixed.items()}, **natives}
        xp = xp_of(natives[order["s_a"]])
        a = Normal(vals[order["loc_a"]], std=std_from(pa, vals[order["s_a"]], xp))
        if two_sided:
            sb = vals[order["s_b"]]
            b = Normal(
                vals[order["loc_b"]], std=std_from(pb, sb, xp if not isinstance(sb, float) else np)
            )
        else:
            b = Normal.standard()
        first, second = (a, b) if best.direction in ("a||b", None) else (b, a)
        return reduce_like(_exact_kl(first, second), probe, result)

    check_gradients(session, args, reference)


def _spread(session: Session, args) -> float:
    """The standard deviation of one call's value (for a function that samples inside)."""
    values = [float(np.sum(session._one_call(args, False).output)) for _ in range(32)]
    return float(np.std(values, ddof=1))


def _biased_estimate(session, hypotheses, closest, probes2, raw2, two_sided) -> None:
    """A function that samples inside and matches no reading: its bias against the nearest."""
    report = session.report
    near = [h for h in hypotheses if h.extra["labelling"] is None and h.result is not None]
    if not near:
        report.verdict = "not-kl"
        report.summary = "its output shape matches no reduction of the inputs"
        return
    h = min(near, key=lambda h: h.result.error)
    r = h.result
    unit = Fit(r.kept, r.denominator, 1.0, 0.0, True)
    from ._fit import predict

    want = float(np.sum(predict(h.probes[0], h.elements[0], unit)))
    got = float(np.sum(h.probes[0].output))
    se = float(np.sqrt(np.sum(np.square(h.probes[0].se)))) if h.probes[0].se is not None else 0.0
    report.params = dict(h.params)
    report.direction = h.direction if two_sided else None
    report.bias = got - want
    rel = abs(got - want) / max(abs(want), 1e-12)
    report.verdict = "biased-estimator" if rel < 5.0 and got > 0 else "not-kl"
    report.closest = f"KL with {reading_text(h)} (off by {r.error:.2g} relative)"
    report.summary = (
        f"samples inside; its expectation is not the KL: bias {got - want:+.4g} ± {se:.2g} at the "
        "first probe"
    )
    report.std = _spread(session, raw2[0])
    report.problems.append(
        Problem("biased", f"its expected value differs from the KL by {got - want:+.4g} ± {se:.2g}")
    )
    session.final_probes = list(h.probes)


def _symmetric_alternatives(raw2, probes2, order, two_sided) -> list[Hypothesis]:
    out = []
    if not two_sided:
        return out
    for pa in SCALES:
        elements = []
        for args in raw2:
            a = _normal(args[order["loc_a"]], args[order["s_a"]], pa)
            b = _normal(args[order["loc_b"]], args[order["s_b"]], pa)
            shape = np.broadcast_shapes(*(np.shape(v) for v in args.values()))
            el = np.asarray(_exact_kl(a, b)) + np.asarray(_exact_kl(b, a))
            elements.append(np.broadcast_to(el, shape))
        out.append(
            Hypothesis(
                f"the symmetric KL(a||b) + KL(b||a) with scales as {pa}",
                {order["s_a"]: pa, order["s_b"]: pa},
                None,
                probes2,
                elements,
                extra={
                    "problem": (
                        "symmetric",
                        "it computes a symmetrized KL (Jeffreys divergence), not KL(a || b)",
                    )
                },
            )
        )
    return out


def _check_at_equality_normal(session: Session, h: Hypothesis | None, two_sided: bool) -> None:
    if h is None or "order" not in h.extra:
        return
    order = h.extra["order"]
    b, d = SHAPES_2D[0]
    pa = h.extra["pa"]
    scalars = session.caller.scalars
    args = {order["loc_a"]: np.zeros((b, d)), order["s_a"]: _from_std(pa, np.ones((b, d)))}
    if two_sided:
        pb = h.extra["pb"] or pa
        sh = () if order["s_b"] in scalars else (b, d)
        args[order["loc_b"]] = np.zeros(sh)
        args[order["s_b"]] = _from_std(pb, np.ones(sh))
    args = {k: args[k] for k in session.names[: len(args)]}
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
