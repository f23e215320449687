"""The ``kldiv`` command: one entry point with subcommands (for now ``kl``).

``kldiv kl P Q`` prints KL(P || Q) with the formula used. ``P`` and ``Q`` are spec expressions
such as ``"Normal(0, std=1)"`` or ``"Categorical(probs=@hist.csv)"``, parsed by the small
grammar in :mod:`kldiv._expr` (never ``eval``); files are read only where the user names them.
Errors print one line ``kldiv: error: ...`` to stderr and exit with status 2.

>>> main(["kl", "Normal(0, std=1)", "Normal(1, std=2)"])
p = Normal(loc=0, std=1)
q = Normal(loc=1, std=2)
KL = log(σq/σp) + (σp² + (μp − μq)²) / (2σq²) − 1/2
KL(p || q) = 0.4431471805599453 nats
0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__
from ._expr import ExpressionError, Parsed, format_array, load_array, parse, parse_value
from ._kl import kl
from ._reduce import REDUCTIONS
from .dists import Bernoulli, Categorical, MultivariateNormal, Normal
from .errors import KLDivError

PROG = "kldiv"

#: The formula printed for each pair of spec types (p's type, q's type).
FORMULAS: dict[tuple[type, type], str] = {
    (Normal, Normal): "KL = log(σq/σp) + (σp² + (μp − μq)²) / (2σq²) − 1/2",
    (Categorical, Categorical): "KL = Σᵢ pᵢ log(pᵢ / qᵢ)",
    (Bernoulli, Bernoulli): "KL = p log(p / q) + (1 − p) log((1 − p) / (1 − q))",
    (MultivariateNormal, MultivariateNormal): (
        "KL = ½[tr(Σq⁻¹Σp) + (μq − μp)ᵀΣq⁻¹(μq − μp) − k + log det Σq − log det Σp]"
    ),
}
FORMULAS[Normal, MultivariateNormal] = FORMULAS[MultivariateNormal, MultivariateNormal] + (
    ", with Σp = diag(σp²)"
)
FORMULAS[MultivariateNormal, Normal] = FORMULAS[MultivariateNormal, MultivariateNormal] + (
    ", with Σq = diag(σq²)"
)
DEFINITION = "KL = E_p[log p(x) − log q(x)]"


def formula_for(p: Any, q: Any) -> str:
    """The formula line for a pair of specs (the definition for pairs without a closed form).

    >>> formula_for(Categorical(probs=[1.0]), Categorical(probs=[1.0]))
    'KL = Σᵢ pᵢ log(pᵢ / qᵢ)'
    """
    return FORMULAS.get((type(p), type(q)), DEFINITION)


# ----------------------------------------------------------------------------------------------
# kldiv kl
# ----------------------------------------------------------------------------------------------
@dataclass
class Options:
    """The keyword arguments of :func:`kldiv.kl`, and how to show them."""

    event_axis: int | tuple[int, ...] | None = None
    mask: Any = None
    mask_label: str | None = None
    reduction: str = "none"
    normalizer: float | None = None
    validate: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {
            "event_axis": self.event_axis,
            "mask": self.mask,
            "reduction": self.reduction,
            "normalizer": self.normalizer,
            "validate": self.validate,
        }

    def shown(self) -> list[str]:
        """The options that differ from the defaults, as ``name=value`` strings."""
        parts = []
        if self.event_axis is not None:
            parts.append(f"event_axis={self.event_axis!r}")
        if self.mask_label is not None:
            parts.append(f"mask={self.mask_label}")
        if self.reduction != "none":
            parts.append(f"reduction={self.reduction}")
        if self.normalizer is not None:
            parts.append(f"normalizer={self.normalizer!r}")
        if self.validate:
            parts.append("validate=True")
        return parts


@dataclass
class Result:
    """One computed KL(p || q) with everything the output shows."""

    p: Parsed
    q: Parsed
    value: Any
    options: Options = field(default_factory=Options)

    @property
    def formula(self) -> str:
        return formula_for(self.p.spec, self.q.spec)

    def as_json(self) -> dict[str, Any]:
        return {
            "p": self.p.display,
            "q": self.q.display,
            "kl": _json_value(self.value),
            "units": "nats",
            "reduction": self.options.reduction,
            "event_axis": _json_axes(self.options.event_axis),
            "mask": self.options.mask_label,
            "normalizer": self.options.normalizer,
            "formula": self.formula,
        }


def compute(p_text: str, q_text: str, options: Options | None = None) -> Result:
    """Parse two expressions and compute KL(p || q) with ``options``.

    >>> float(compute("Bernoulli(probs=0.5)", "Bernoulli(probs=0.5)").value)
    0.0
    """
    options = options or Options()
    p = parse(p_text, name="p")
    q = parse(q_text, name="q")
    try:
        with np.errstate(all="ignore"):  # inf and nan are shown in the value itself
            value = kl(p.spec, q.spec, **options.kwargs())
    except KLDivError:
        raise
    except Exception as err:  # a bug in kldiv: still one line, and say so
        raise KLDivError(
            f"kl: unexpected {type(err).__name__} inside kldiv ({err}); please report this "
            "command line as a bug"
        ) from err
    return Result(p, q, np.asarray(value), options)


def _value_line(label: str, value: np.ndarray) -> str:
    prefix = f"{label} = "
    text = prefix + format_array(value, prefix=prefix) + " nats"
    if value.ndim:
        text += f"  (shape {value.shape})"
    return text


def _print_result(result: Result) -> None:
    print(f"p = {result.p.display}")
    print(f"q = {result.q.display}")
    shown = result.options.shown()
    if shown:
        print(f"options: {', '.join(shown)}")
    print(result.formula)
    print(_value_line("KL(p || q)", result.value))


def _json_value(value: Any) -> Any:
    """A float or nested list; non-finite numbers as the strings "inf", "-inf" and "nan"."""
    plain = np.asarray(value, dtype=np.float64).tolist()

    def fix(x: Any) -> Any:
        if isinstance(x, list):
            return [fix(v) for v in x]
        return x if math.isfinite(x) else str(x)

    return fix(plain)


def _json_axes(axes: Any) -> Any:
    return list(axes) if isinstance(axes, tuple) else axes


def _parse_axes(values: Sequence[str] | None) -> int | tuple[int, ...] | None:
    if not values:
        return None
    axes = []
    for value in values:
        for item in value.split(","):
            try:
                axes.append(int(item.strip()))
            except ValueError:
                raise ExpressionError(
                    f"--event-axis: expected integers (e.g. -1 or 0,2), got {value!r}"
                ) from None
    return axes[0] if len(axes) == 1 else tuple(axes)


def _load_mask(text: str | None) -> tuple[Any, str | None]:
    if text is None:
        return None, None
    stripped = text.strip()
    if stripped.startswith(("[", "(")):
        return parse_value(stripped, name="--mask"), stripped
    path = stripped[1:] if stripped.startswith("@") else stripped
    return load_array(path, what="--mask: file", as_float=False), "@" + path


def _run_kl(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    exprs = [e for e in (args.p, args.q) if e is not None]
    if args.examples:
        if exprs:
            parser.error("--examples takes no expressions P and Q")
        return run_examples(as_json=args.json)
    if len(exprs) < 2:
        parser.error(
            "expected two expressions P and Q, as in "
            'kldiv kl "Normal(0, std=1)" "Normal(1, std=2)" '
            "(or --examples to run the built-in examples)"
        )
    mask, mask_label = _load_mask(args.mask)
    options = Options(
        event_axis=_parse_axes(args.event_axis),
        mask=mask,
        mask_label=mask_label,
        reduction=args.reduction,
        normalizer=args.normalizer,
        validate=args.validate,
    )
    result = compute(args.p, args.q, options)
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        _print_result(result)
    return 0


# ----------------------------------------------------------------------------------------------
# kldiv kl --examples
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """A built-in example: two expressions, options, and the lesson they teach."""

    title: str
    p: str
    q: str
    lesson: str
    argv: tuple[str, ...] = ()
    both_directions: bool = False
    naive_normal: bool = False


EXAMPLES = (
    Example(
        "two Gaussians: say which scale you mean",
        "Normal(0, std=1)",
        "Normal(1, var=4)",
        "N(1, 4) is ambiguous; here 4 is a variance (std=2). Writing std=, var=, log_std= or "
        "log_var= at the call site makes the parametrization impossible to misread.",
    ),
    Example(
        "the VAE prior term: sum over the latent axis, mean over the batch",
        "Normal([[0.5, -1.0], [0.0, 2.0]], log_var=[[-1, 0.5], [0, 0]])",
        "Normal.standard()",
        "Encoders output log σ²: Normal(mu, log_var=lv) against Normal.standard() is "
        "½(μ² + σ² − 1 − log σ²) per latent; --event-axis -1 sums the latents, --reduction "
        "mean averages the batch.",
        argv=("--event-axis", "-1", "--reduction", "mean"),
    ),
    Example(
        "a zero class, and why the direction matters",
        "Categorical(probs=[0.5, 0.5, 0])",
        "Categorical(logits=[0, 1, 2])",
        "A class with p = 0 adds nothing to KL(p || q) (0 log 0 = 0), but KL(q || p) is +inf: "
        "q puts mass where p has none. KL is not symmetric; the first argument is the one the "
        "expectation is under.",
        both_directions=True,
    ),
    Example(
        "near-equal Gaussians: every digit counts",
        "Normal(0, std=1)",
        "Normal(0, std=1.0001)",
        "The textbook log(σq/σp) + σp²/(2σq²) − 1/2 cancels when σp ≈ σq and loses about half "
        "of the float64 digits here; kldiv works with the difference of the scales and keeps "
        "them all.",
        naive_normal=True,
    ),
)


def _naive_normal(p: Normal, q: Normal) -> float:
    """The textbook Normal formula in float64, as most code writes it (for the example)."""
    sp, sq = float(p.std), float(q.std)
    dmu = float(p.loc) - float(q.loc)
    return math.log(sq / sp) + (sp**2 + dmu**2) / (2 * sq**2) - 0.5


def _example_command(ex: Example) -> str:
    return " ".join([PROG, "kl", f'"{ex.p}"', f'"{ex.q}"', *ex.argv])


def run_examples(*, as_json: bool = False) -> int:
    """Run the built-in examples (``kldiv kl --examples``) through the same parser as input."""
    parser = build_parser()
    records = []
    for number, ex in enumerate(EXAMPLES, start=1):
        args = parser.parse_args(["kl", ex.p, ex.q, *ex.argv])
        options = Options(event_axis=_parse_axes(args.event_axis), reduction=args.reduction)
        result = compute(ex.p, ex.q, options)
        record = {
            "title": ex.title,
            "command": _example_command(ex),
            **result.as_json(),
            "lesson": ex.lesson,
        }
        lines = [f"Example {number}: {ex.title}", f"  $ {_example_command(ex)}"]
        lines += [f"  p = {result.p.display}", f"  q = {result.q.display}"]
        if options.shown():
            lines.append(f"  options: {', '.join(options.shown())}")
        lines.append(f"  {result.formula}")
        value_line = _value_line("KL(p || q)", result.value)
        if ex.both_directions:
            reverse = compute(ex.q, ex.p, options)
            record["kl_reverse"] = _json_value(reverse.value)
            value_line += "    " + _value_line("KL(q || p)", reverse.value)
        lines.append(f"  {value_line}")
        if ex.naive_normal:
            naive = _naive_normal(result.p.spec, result.q.spec)
            exact = float(result.value)
            record["kl_textbook_float64"] = naive
            lines.append(
                f"  textbook formula in float64 = {naive!r} nats "
                f"(relative difference {abs(naive - exact) / exact:.1e})"
            )
        lines.append(
            textwrap.fill(
                ex.lesson, width=100, initial_indent="  lesson: ", subsequent_indent=" " * 10
            )
        )
        records.append(record)
        if not as_json:
            if number > 1:
                print()
            print("\n".join(lines))
    if as_json:
        print(json.dumps(records))
    return 0


# ----------------------------------------------------------------------------------------------
# The parser and main
# ----------------------------------------------------------------------------------------------
KL_DESCRIPTION = """\
Print KL(P || Q), the divergence of Q from P with the expectation taken under P, and the
formula used.

P and Q are spec expressions (quote them for the shell):
  Normal(loc, std=... | var=... | log_std=... | log_var=...)    exactly one scale keyword
  Normal.standard()                                             N(0, 1)
  MultivariateNormal(loc, scale_tril=... | covariance=... | precision=...)
  Categorical(probs=... | logits=... | log_probs=..., axis=-1)
  Bernoulli(probs=... | logits=...)
Values are numbers, inf, nested lists such as [[0.5, 0.5], [1, 0]], or @path to read an array
from a .npy file (allow_pickle=False) or a .csv file (comma-separated numbers; a first line
that is not numbers is skipped as a header; one row or one column reads as 1-D); integer arrays
become float64. Only the files named with @ (and --mask) are read; paths are relative to the
current directory. Quote a path with spaces: @"my file.csv".
Expressions are parsed by a small grammar, never evaluated as Python.
"""

KL_EPILOG = """\
examples:
  kldiv kl "Normal(0, std=1)" "Normal(1, std=2)"
  kldiv kl "Categorical(probs=@p.csv)" "Categorical(probs=@q.csv)" --json
  kldiv kl "Normal(@mu.npy, log_var=@lv.npy)" "Normal.standard()" --event-axis -1 \\
      --reduction mean
  kldiv kl --examples

Errors print one line "kldiv: error: ..." on stderr and exit with status 2.
"""


def _add_kl_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "kl",
        help="KL(P || Q) of two distributions, with its formula",
        description=KL_DESCRIPTION,
        epilog=KL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "p",
        nargs="?",
        metavar="P",
        help='the distribution the expectation is under, e.g. "Normal(0, std=1)"',
    )
    p.add_argument("q", nargs="?", metavar="Q", help='the other one, e.g. "Normal(1, std=2)"')
    p.add_argument(
        "--examples",
        action="store_true",
        help="run the built-in examples, each with its lesson, and exit",
    )
    p.add_argument(
        "--event-axis",
        action="append",
        metavar="AXES",
        help="input axes to sum as independent dimensions: an int or a comma list; "
        "repeatable (write --event-axis=-1,-2 for a list starting with -)",
    )
    p.add_argument(
        "--mask",
        metavar="PATH",
        help="a mask from a .npy/.csv file (PATH or @PATH) or a list such as "
        '"[1, 1, 0]": masked entries contribute 0 and are not counted',
    )
    p.add_argument(
        "--reduction",
        choices=REDUCTIONS,
        default="none",
        help="none: per-distribution values (default); sum; mean: over unmasked "
        "distributions; batchmean: total / size of axis 0",
    )
    p.add_argument(
        "--normalizer",
        type=float,
        metavar="FLOAT",
        help="an explicit divisor of the total, overriding the reduction's",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help="check the values (probabilities, scales, mask) and report the first bad one",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object {"p", "q", "kl", "units", "reduction", '
        '"event_axis", "mask", "normalizer", "formula"}; inf and nan are the '
        'strings "inf", "-inf", "nan"',
    )
    p.set_defaults(handler=_run_kl, subparser=p)


def build_parser() -> argparse.ArgumentParser:
    """The ``kldiv`` parser; each subcommand sets ``handler(args, its_parser) -> int``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="kldiv: KL divergence that is correct, explicit and fast. "
        "KL(p || q) always takes the expectation under p, the first argument.",
        epilog='Run "kldiv COMMAND --help" for the options of a command.',
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_kl_parser(subparsers)
    # Further subcommands live beside the code they drive and import it only when run.
    from ._estimate_cli import add_estimate_parser
    from .audit.cli import add_audit_parser

    add_audit_parser(subparsers)
    add_estimate_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kldiv`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args, args.subparser)
    except SystemExit as exc:  # --help, --version and usage errors from argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KLDivError as err:  # ExpressionError included
        print(f"{PROG}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `kldiv kl --examples | head`
        _silence_stdout()
        return 1
    except OSError as err:
        print(f"{PROG}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (in-process capture)
        pass


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
