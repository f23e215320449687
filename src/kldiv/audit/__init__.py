"""The convention auditor: what does somebody's KL function really compute?

:func:`audit` treats the function as a black box. It calls it on probes whose exact KL kldiv
knows, in several shapes, parametrizations and input spaces, and reports the reading that
explains every output: the verdict, the parametrization of each argument, the direction, the
reduction and constant factor in kldiv's terms, the equivalent kldiv call, and problems found on
the way (negative values, in-place mutation, wrong gradients, clipping bias). It runs the user's
function and nothing else.

Importing this package imports neither torch nor jax; the backend is imported when a function
is audited with it.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import KLDivError, bad, describe
from ._call import (
    BACKENDS,
    Caller,
    make_backend,
    parameter_names,
    preferred_backends,
    required_extras,
    seeded_global_rngs,
)
from ._categorical import audit_categorical
from ._logratio import LR_ROLES, audit_log_ratio, resolve_roles
from ._normal import audit_normal
from ._report import VERDICTS, AuditReport, Problem
from ._sampled import ROLES, audit_normal_sample, parse_roles
from ._session import Abort, Session, record_problems

#: the kinds of function the auditor knows, with the signature each expects
KINDS = {
    "normal-standard": "fn(loc, s): a diagonal Gaussian against N(0, I)",
    "normal": "fn(loc_a, s_a, loc_b, s_b): two diagonal Gaussians",
    "categorical": "fn(a, b): two discrete distributions (probs, log-probs or logits)",
    "log-ratio": "fn(logp, logp_ref[, behavior][, mask]): per-token log-probs of sampled tokens",
    "normal-sample": "a one-sample estimator (VITS); roles name the sample, locs, scales, mask",
}
_ARITY = {"normal-standard": 2, "normal": 4, "categorical": 2, "log-ratio": 2}

__all__ = ["KINDS", "LR_ROLES", "ROLES", "VERDICTS", "AuditReport", "Problem", "audit"]


def audit(
    fn: Callable[..., Any],
    kind: str,
    *,
    roles: Mapping[str, str] | str | None = None,
    args: Mapping[str, Any] | None = None,
    backend: str | None = None,
    seed: int = 0,
    time_limit: float = 60.0,
) -> AuditReport:
    """Probe ``fn`` with inputs whose KL is known and report what it computes.

    Args:
        fn: the function to audit, or an ``nn.Module`` (its ``forward``'s signature is read).
            It is called with arrays of ``backend`` (positionally, in the order its kind gives;
            by keyword for ``normal-sample`` and ``log-ratio``).
        kind: one of :data:`KINDS`: ``"normal-standard"``, ``"normal"``, ``"categorical"``,
            ``"log-ratio"``, ``"normal-sample"``.
        roles: for ``normal-sample``, a map (or ``"name=role,..."``) from the function's
            argument names to ``sample``, ``q.loc``, ``q.scale``, ``p.loc``, ``p.scale`` or
            ``mask``; ``sample@q`` pins the side the sample is drawn from. For ``log-ratio``,
            to ``logp``, ``logp_ref``, ``behavior`` (log-probs under the policy that sampled
            the tokens) or ``mask``; by default they come from the argument names.
        args: values of the function's further arguments (``temperature``, ``beta``,
            ``reduction``, ...), passed by keyword on every call.
        backend: ``"numpy"``, ``"torch"`` or ``"jax"``; by default the ones the function's
            module imports are tried first.
        seed: seeds every probe (and NumPy's and torch's global generators, restored after),
            so a report is reproducible.
        time_limit: seconds before the auditor stops probing; one call may take at most
            ``min(10, time_limit / 2)`` seconds. A function that hangs gets a
            ``could-not-audit`` verdict with a ``timeout`` problem.

    Returns:
        An :class:`AuditReport`; ``report.to_dict()`` is its JSON form.

    >>> import numpy as np
    >>> def vae_kl(mu, log_var):
    ...     return -0.5 * np.sum(1 + log_var - mu**2 - np.exp(log_var))
    >>> r = audit(vae_kl, "normal-standard")
    >>> r.verdict, r.params, r.reduction
    ('exact', {'log_var': 'log_var'}, 'sum')
    """
    if kind not in KINDS:
        raise bad("kind", "one of " + ", ".join(repr(k) for k in KINDS), describe(kind))
    if backend is not None and backend not in BACKENDS:
        raise bad("backend", "one of 'numpy', 'torch', 'jax'", describe(backend))
    if not callable(fn):
        raise bad("fn", "a callable", describe(fn))
    if args is not None and not (
        isinstance(args, Mapping) and all(isinstance(k, str) for k in args)
    ):
        raise bad("args", "a mapping from argument names to values", describe(args))
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    start = time.perf_counter()
    report = AuditReport(function=name, kind=kind, verdict="not-kl")
    role_map = parse_roles(roles) if kind == "normal-sample" else None
    lr_roles = None
    if kind == "log-ratio" and roles is not None:
        lr_roles = _parse_lr_roles(roles)
    elif kind not in ("normal-sample", "log-ratio") and roles is not None:
        raise bad(
            "roles",
            f"no roles for kind {kind!r} (only 'normal-sample' and 'log-ratio')",
            repr(roles),
        )
    extra = dict(args or {})
    names = _argument_names(fn, kind, role_map)
    used = list(names)
    if kind == "log-ratio":
        used = list(resolve_roles(fn, names, lr_roles).values())
    missing = required_extras(fn, used, extra)
    if missing:
        shown = ", ".join(missing)
        given = ", ".join(repr(m) + ": ..." for m in missing)
        report.verdict = "could-not-audit"
        report.problems.append(
            Problem(
                "missing-argument",
                f"it needs a value for {shown}: give it with args={{{given}}} (on the command "
                f"line: {' '.join('--arg ' + m + '=VALUE' for m in missing)})",
            )
        )
        report.summary = f"needs {shown}, which was not given"
        return report
    candidates = [backend] if backend is not None else preferred_backends(fn)
    errors: list[tuple[str, str, str | None]] = []
    with seeded_global_rngs(seed):
        for which in candidates:
            try:
                be = make_backend(which)
            except ImportError:
                if backend is not None:
                    raise KLDivError(f"backend: {which} is not installed") from None
                continue
            caller = Caller(fn, be, timeout=max(1.0, min(10.0, time_limit / 2)), extra=extra)
            report = AuditReport(function=name, kind=kind, verdict="not-kl", backend=which)
            session = Session(caller, report, names, seed, start + time_limit)
            try:
                _run(session, kind, role_map, lr_roles)
            except Abort as exc:
                report.calls = caller.calls
                if exc.code == "wrong-backend" and backend is None:
                    errors.append((which, exc.message, exc.trace))
                    continue  # the first call failed: try the next backend
                exc.code = "raises" if exc.code == "wrong-backend" else exc.code
                report.verdict = "not-kl" if exc.code == "nan" else "could-not-audit"
                report.problems.append(Problem(exc.code, exc.message))
                report.traceback = exc.trace
                report.summary = (
                    "returned NaN or inf on valid inputs"
                    if exc.code == "nan"
                    else "could not be audited to the end"
                )
            record_problems(session, report)
            report.calls = caller.calls
            report.seconds = time.perf_counter() - start
            return report
    report = AuditReport(function=name, kind=kind, verdict="could-not-audit", backend=None)
    report.problems.append(
        Problem(
            "raises",
            "it fails on every backend tried: " + " | ".join(f"{w}: {m}" for w, m, _ in errors),
        )
    )
    report.traceback = errors[0][2] if errors else None
    report.summary = "could not be called"
    report.seconds = time.perf_counter() - start
    return report


def _parse_lr_roles(roles: Mapping[str, str] | str) -> dict[str, str]:
    """``"old_logp=behavior,mask=mask"`` or a mapping, for the log-ratio kind."""
    if isinstance(roles, str):
        out: dict[str, str] = {}
        for item in roles.split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise bad("roles", "items of the form name=role", repr(item.strip()))
            k, v = (x.strip() for x in item.split("=", 1))
            out[k] = v
        return out
    return dict(roles)


class _CallableModule(types.ModuleType):
    """``kldiv.audit(fn, kind)`` calls :func:`audit`, and ``kldiv.audit.gallery`` stays a module."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditReport:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def _argument_names(fn: Callable[..., Any], kind: str, roles: dict[str, str] | None) -> list[str]:
    if roles is not None:
        return list(roles)
    found = parameter_names(fn)
    if kind == "log-ratio" and found is not None:
        return found[:2] if len(found) >= 2 else found + ["logp", "logp_ref"][len(found) :]
    need = _ARITY[kind]
    default = {
        "normal-standard": ["loc", "s"],
        "normal": ["loc_a", "s_a", "loc_b", "s_b"],
        "categorical": ["a", "b"],
        "log-ratio": ["logp", "logp_ref"],
    }[kind]
    if found is None or len(found) < need:
        return default if found is None else (found + default[len(found) :])[:need]
    return found[:need]


def _run(session: Session, kind: str, roles, lr_roles) -> None:
    if kind == "normal-standard":
        audit_normal(session, two_sided=False)
    elif kind == "normal":
        audit_normal(session, two_sided=True)
    elif kind == "categorical":
        audit_categorical(session)
    elif kind == "log-ratio":
        audit_log_ratio(session, lr_roles)
    else:
        assert roles is not None
        audit_normal_sample(session, roles)
