"""``kldiv audit``: audit a KL function in a file, or run the built-in gallery.

``kldiv audit path/to/file.py:function --kind KIND`` imports that file, as pytest does, and
audits the named function; it runs the user's own code and nothing else. Exit status: 0 when
the verdict is expected (``exact`` or an ``unbiased-estimator`` of the KL itself, or one of
``--expect``) and no problem in ``--fail-on`` was found; 1 otherwise; 2 for a usage error; 3
when the function could not be audited (it raised, hung, or needs an argument not given).
``kldiv audit --gallery`` audits the formulas from the questions people ask (see
:mod:`kldiv.audit.gallery`) and prints one table; it exits 0 when every verdict is the one
derived by hand.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import KLDivError

HELP = (
    "Probe a KL function with inputs whose KL is known and report what it computes: the "
    "verdict (exact, exact-scaled, unbiased-estimator, biased-estimator, not-kl), how it reads "
    "each argument, the direction, the reduction, the equivalent kldiv call, and problems. "
    "It imports and runs your file and function (as pytest does) and nothing else."
)


def add_audit_parser(subparsers: Any) -> None:
    """Register ``kldiv audit`` on the ``kldiv`` parser."""
    from . import KINDS

    p = subparsers.add_parser(
        "audit",
        help="say what a KL function computes",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="kinds:\n" + "\n".join(f"  {k:<16} {v}" for k, v in KINDS.items()) + "\n\n"
        "examples:\n"
        "  kldiv audit --gallery\n"
        "  kldiv audit losses.py:kl_loss --kind normal-standard\n"
        "  kldiv audit vits/losses.py:kl_loss --kind normal-sample \\\n"
        "      --roles z_p=sample,logs_q=q.scale,m_p=p.loc,logs_p=p.scale,z_mask=mask\n"
        "  kldiv audit kd.py:kd_loss --kind categorical --arg T=4 --expect exact-scaled\n\n"
        "exit status: 0 pass, 1 fail (verdict not expected, or a --fail-on problem), "
        "2 usage error, 3 could not be audited",
    )
    p.add_argument("target", nargs="?", help="FILE.py:FUNCTION or package.module:FUNCTION")
    p.add_argument("--kind", choices=list(KINDS), help="what the function's arguments are")
    p.add_argument(
        "--roles",
        help="for normal-sample: name=role,... (sample, q.loc, q.scale, p.loc, p.scale, mask); "
        "for log-ratio: name=role,... (logp, logp_ref, behavior, mask)",
    )
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for one of the function's further arguments (temperature=2.0, "
        "reduction='sum'); repeat for several. VALUE is a Python literal, else a string",
    )
    p.add_argument(
        "--expect",
        help="comma-separated verdicts that pass (default: exact,unbiased-estimator with "
        "factor 1); e.g. --expect exact-scaled for a T² or β the code means to apply",
    )
    p.add_argument(
        "--fail-on",
        default="",
        help="comma-separated problem codes that fail even with an expected verdict "
        "(e.g. gradient-wrong,mutates-input,clipping)",
    )
    p.add_argument("--backend", choices=["numpy", "torch", "jax"], help="default: detected")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--gallery",
        action="store_true",
        help="audit the built-in gallery of formulas from real questions",
    )
    p.set_defaults(handler=run_audit, subparser=p)


def load_function(target: str) -> Any:
    """The function named by ``FILE.py:NAME`` or ``module:NAME`` (imports the user's code)."""
    if ":" not in target:
        raise KLDivError(f"target: expected FILE.py:FUNCTION or module:FUNCTION; got {target!r}")
    where, _, name = target.rpartition(":")
    path = Path(where)
    if where.endswith(".py") or path.exists():
        if not path.is_file():
            raise KLDivError(f"target: no such file {where!r}")
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)  # so the file's own imports of its neighbours work
        try:
            spec = importlib.util.spec_from_file_location(f"_kldiv_audit_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    else:
        module = importlib.import_module(where)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise KLDivError(f"target: {where!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise KLDivError(f"target: {target!r} is not callable")
    return obj


def run_audit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import VERDICTS, audit

    if args.gallery:
        if args.target or args.kind:
            parser.error("--gallery takes no target or --kind")
        return _run_gallery(args)
    if not args.target or not args.kind:
        parser.error("give FILE.py:FUNCTION and --kind (or --gallery)")
    try:
        fn = load_function(args.target)
    except KLDivError:
        raise
    except Exception as exc:  # the user's module failed to import
        raise KLDivError(f"target: importing {args.target!r} failed: {exc}") from None
    extra = parse_args_option(args.arg)
    expect = tuple(v.strip() for v in (args.expect or "").split(",") if v.strip())
    unknown = [v for v in expect if v not in VERDICTS]
    if unknown:
        raise KLDivError(f"--expect: expected verdicts among {', '.join(VERDICTS)}; got {unknown}")
    fail_on = tuple(v.strip() for v in args.fail_on.split(",") if v.strip())
    report = audit(
        fn, args.kind, roles=args.roles, args=extra, backend=args.backend, seed=args.seed
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    if report.verdict == "could-not-audit":
        return 3
    return 0 if report.passes(expect or None, fail_on) else 1


def parse_args_option(items: list[str]) -> dict[str, Any]:
    """``["T=4", "reduction=sum"]`` -> ``{"T": 4, "reduction": "sum"}`` (Python literals, else
    strings).

    >>> parse_args_option(["temperature=2.0", "reduction='sum'", "mode=k3+"])
    {'temperature': 2.0, 'reduction': 'sum', 'mode': 'k3+'}
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise KLDivError(f"--arg: expected NAME=VALUE; got {item!r}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[name.strip()] = value
    return out


def _run_gallery(args: argparse.Namespace) -> int:
    from .gallery import gallery_table, run_gallery

    start = time.perf_counter()
    results = run_gallery(seed=args.seed)
    right = sum(r.verdict == e.expected for e, r in results)
    if args.json:
        out = [
            {"seed": e.seed, "label": e.label, "expected": e.expected} | r.to_dict()
            for e, r in results
        ]
        print(json.dumps(out, indent=2))
    else:
        print("kldiv audit --gallery: the KL code from the questions in the field\n")
        print(gallery_table(results))
        print(
            f"\n{right} of {len(results)} verdicts as derived by hand "
            f"({time.perf_counter() - start:.1f} s). "
            "Audit your own: kldiv audit FILE.py:FUNCTION --kind KIND"
        )
    return 0 if right == len(results) else 1
