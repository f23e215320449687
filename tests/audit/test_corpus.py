"""kldiv.audit against a held-out corpus of KL code with hand-derived answers.

The corpus (``corpus.py`` next to this file) reproduces KL functions from public code; each case
says what the function computes. This file only runs ``kldiv.audit`` on them and compares
``report.to_dict()``: ``verdict``, ``params``, ``direction``, ``reduction`` and ``factor``
(evaluated at several sizes, so ``"1/D"`` and ``"0.2"`` differ), plus ``problems`` substrings
and ``temperature`` where a case names them. See the corpus docstring for the conventions.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import kldiv

_CORPUS_NAME = "kldiv_audit_held_out_corpus"
_spec = importlib.util.spec_from_file_location(_CORPUS_NAME, Path(__file__).with_name("corpus.py"))
assert _spec is not None and _spec.loader is not None
corpus = importlib.util.module_from_spec(_spec)
sys.modules[_CORPUS_NAME] = corpus
_spec.loader.exec_module(corpus)

# F.kl_div(reduction="mean") and nn.KLDivLoss() warn on every call; the suite turns warnings into
# errors, which the user's own environment does not. The audit must see the function as the user
# runs it.
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")

VERDICTS = {"exact", "exact-scaled", "unbiased-estimator", "biased-estimator", "not-kl"}
SCALAR_REDUCTIONS = {"sum", "mean", "batchmean"}
# Sizes at which factor expressions are compared: distinct primes-ish, so B, D, C, T can't be
# confused and no constant matches a size-dependent factor.
SIZES = [
    {"B": 3, "D": 5, "C": 7, "T": 11},
    {"B": 8, "D": 2, "C": 4, "T": 16},
    {"B": 1, "D": 13, "C": 2, "T": 3},
]
_NAMESPACE = {
    "math": math,
    "log": math.log,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "pi": math.pi,
    "e": math.e,
    "ln2": math.log(2.0),
}


def _audit(fn: Any, kind: str, **kwargs: Any) -> Any:
    audit = getattr(kldiv, "audit", None)
    if audit is None:  # not re-exported (yet): the subpackage
        audit = importlib.import_module("kldiv.audit")
    if isinstance(audit, types.ModuleType):  # kldiv.audit may be the package holding audit()
        audit = audit.audit
    return audit(fn, kind, **kwargs)


def _factor(expr: Any, sizes: dict[str, int]) -> float:
    if expr is None:
        raise ValueError("no factor")
    if isinstance(expr, (int, float)):
        return float(expr)
    text = str(expr).replace("^", "**")
    return float(eval(text, {"__builtins__": {}}, {**_NAMESPACE, **sizes}))


def _same_factor(got: Any, want: str) -> bool:
    try:
        return all(math.isclose(_factor(got, s), _factor(want, s), rel_tol=1e-4) for s in SIZES)
    except Exception:
        return False


def _canonical_reduction(reduction: Any, kind: str) -> Any:
    # for the deterministic kinds each example is one distribution: batchmean is the mean
    if kind in ("normal-standard", "normal", "categorical") and reduction == "batchmean":
        return "mean"
    return reduction


def _matches(value: Any, want: Any) -> bool:
    return value in want if isinstance(want, tuple) else value == want


def _check(case: Any, got: dict[str, Any]) -> list[str]:
    want = case.expected
    errors: list[str] = []
    verdict = got.get("verdict")
    if verdict not in VERDICTS:
        errors.append(f"verdict {verdict!r} is not one of {sorted(VERDICTS)}")

    params = got.get("params") or {}
    for name, space in want.get("params", {}).items():
        if params.get(name) != space:
            errors.append(f"params[{name!r}]: expected {space!r}, got {params.get(name)!r}")
    if "direction" in want and got.get("direction") != want["direction"]:
        errors.append(f"direction: expected {want['direction']!r}, got {got.get('direction')!r}")
    if case.ambiguous:
        return errors

    if "verdict" in want and not _matches(verdict, want["verdict"]):
        errors.append(f"verdict: expected {want['verdict']!r}, got {verdict!r}")

    reduction = _canonical_reduction(got.get("reduction"), case.kind)
    options = [want, *({**want, **alt} for alt in want.get("alt", []))]
    if "reduction" in want:
        ok = False
        for option in options:
            if not _matches(reduction, option["reduction"]):
                continue
            if "factor" in option and not _same_factor(got.get("factor"), option["factor"]):
                continue
            ok = True
            break
        if not ok:
            errors.append(
                f"reduction/factor: expected {[(o['reduction'], o.get('factor')) for o in options]}"
                f", got ({got.get('reduction')!r}, {got.get('factor')!r})"
            )
    elif "factor" in want and not _same_factor(got.get("factor"), want["factor"]):
        errors.append(f"factor: expected {want['factor']!r}, got {got.get('factor')!r}")

    if "problems" in want:
        text = str(got.get("problems", "")).lower()
        if not any(word in text for word in want["problems"]):
            errors.append(f"problems: expected one of {want['problems']}, got {text!r}")
    if "temperature" in want and got.get("temperature") is not None:
        if not math.isclose(float(got["temperature"]), want["temperature"], rel_tol=1e-3):
            errors.append(
                f"temperature: expected {want['temperature']}, got {got['temperature']!r}"
            )
    return errors


def test_corpus_is_broad() -> None:
    kinds = {case.kind for case in corpus.CASES}
    assert kinds == {"normal-standard", "normal", "categorical", "log-ratio", "normal-sample"}
    assert len(corpus.CASES) <= 100


@pytest.mark.parametrize("case", corpus.CASES, ids=[case.name for case in corpus.CASES])
def test_audit_matches_hand_derived_answer(case: Any) -> None:
    report = _audit(case.fn, case.kind, roles=case.roles, backend=case.backend, args=case.args)
    got = report.to_dict()
    errors = _check(case, got)
    assert not errors, (
        f"{case.name} ({case.source}):\n  " + "\n  ".join(errors) + f"\nreport: {got!r}"
    )
