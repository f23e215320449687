"""The auditor's answer: :class:`AuditReport`, its dictionary form and its terminal rendering."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

VERDICTS = (
    "exact",
    "exact-scaled",
    "unbiased-estimator",
    "biased-estimator",
    "not-kl",
    "could-not-audit",
)
GOOD_VERDICTS = ("exact", "unbiased-estimator")


@dataclass
class Problem:
    """Something wrong with the function, with a short machine code and a sentence."""

    code: str
    message: str


@dataclass
class AuditReport:
    """What a KL function computes, with the evidence that decided it.

    ``verdict`` is one of ``exact``, ``exact-scaled``, ``unbiased-estimator``,
    ``biased-estimator``, ``not-kl``, or ``could-not-audit`` (the function raised on valid
    inputs, hung, or needs an argument that was not given; ``traceback`` shows where).
    ``params`` maps the function's own argument names to the
    parametrization the auditor inferred; ``direction`` is ``"a||b"`` when the function computes
    KL(first || second) in its argument order (``"q||p"``/``"p||q"`` name the sampled side for
    ``normal-sample``); ``reduction`` and ``factor`` say how it reduces, in kldiv's terms
    (``factor`` is a Python expression in ``B``, ``D``, ``C``, ``T`` and ``M``, the number of
    valid mask positions); ``equivalent`` is a kldiv call that computes the same thing.
    """

    function: str
    kind: str
    verdict: str
    backend: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    direction: str | None = None
    reduction: str | None = None
    factor: str | None = None
    temperature: float | None = None
    class_axis: int | None = None
    estimator: str | None = None
    gradient_estimator: str | None = None
    clamp: str | None = None
    equivalent: str | None = None
    summary: str = ""
    closest: str | None = None
    bias: float | None = None
    std: float | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    traceback: str | None = None
    calls: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True for ``exact`` and for an ``unbiased-estimator`` of the KL itself (factor 1): the
        CLI's exit status 0 by default."""
        if self.verdict == "unbiased-estimator":
            return self.factor in (None, "1")
        return self.verdict in GOOD_VERDICTS

    def passes(self, expect: tuple[str, ...] | None = None, fail_on: tuple[str, ...] = ()) -> bool:
        """Whether the verdict is one of ``expect`` (default: :attr:`ok`) and no problem's code
        is in ``fail_on``."""
        good = self.ok if not expect else self.verdict in expect
        return good and not any(p.code in fail_on for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the CLI's ``--json`` output)."""
        return {
            "function": self.function,
            "kind": self.kind,
            "verdict": self.verdict,
            "backend": self.backend,
            "params": dict(self.params),
            "direction": self.direction,
            "reduction": self.reduction,
            "factor": self.factor,
            "temperature": self.temperature,
            "class_axis": self.class_axis,
            "estimator": self.estimator,
            "gradient_estimator": self.gradient_estimator,
            "clamp": self.clamp,
            "equivalent": self.equivalent,
            "summary": self.summary,
            "closest": self.closest,
            "bias": self.bias,
            "std": self.std,
            "problems": [{"code": p.code, "message": p.message} for p in self.problems],
            "notes": list(self.notes),
            "evidence": list(self.evidence),
            "traceback": self.traceback,
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
        }

    def render(self, *, color: bool | None = None) -> str:
        """The report as text for a terminal (ANSI colour when ``color`` or a TTY)."""
        if color is None:
            color = _wants_color()
        paint = _painter(color)
        tone = (
            "green"
            if self.ok
            else ("red" if self.verdict in ("not-kl", "could-not-audit") else "yellow")
        )
        lines = [
            f"{paint('bold', self.function)}  ({self.kind}, {self.backend or 'no backend'})",
            f"  verdict      {paint(tone, self.verdict)}"
            + (f"  {self.summary}" if self.summary else ""),
        ]
        if self.params:
            shown = ", ".join(f"{k}: {v}" for k, v in self.params.items())
            lines.append(f"  params       {shown}")
        for label, value in (
            ("direction", self.direction),
            ("estimator", self.estimator),
            ("gradient", self.gradient_estimator),
            ("reduction", self.reduction),
            ("factor", self.factor),
            ("temperature", None if self.temperature is None else f"{self.temperature:g}"),
            ("class axis", None if self.class_axis is None else str(self.class_axis)),
            ("closest", self.closest),
            ("bias", None if self.bias is None else f"{self.bias:+.4g}"),
            ("std", None if self.std is None else f"{self.std:.4g}"),
            ("equivalent", self.equivalent),
        ):
            if value is not None:
                lines.append(f"  {label:<12} {value}")
        for p in self.problems:
            lines.append(f"  {paint('red', 'problem')}      {p.message}")
        for n in self.notes:
            lines.append(f"  note         {n}")
        for e in self.evidence:
            lines.append(f"  {paint('dim', 'evidence')}     {paint('dim', e)}")
        if self.traceback:
            lines.append("  traceback    (the last frames of the function's own code)")
            lines.extend(f"    {line}" for line in self.traceback.splitlines())
        lines.append(paint("dim", f"  ({self.calls} calls, {self.seconds:.2f} s)"))
        return "\n".join(lines)


def _wants_color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(sys.stdout, "isatty", lambda: False)()) and os.environ.get(
        "TERM", ""
    ) not in ("", "dumb")


_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}


def _painter(color: bool):
    def paint(style: str, text: str) -> str:
        return f"\033[{_CODES[style]}m{text}\033[0m" if color else text

    return paint
