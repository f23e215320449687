"""Score kldiv.audit on a corpus of labelled KL functions: ``python tests/audit/score.py corpus``
(``tests/audit/corpus.py``, the functions the auditor was built against) or ``... holdout``
(``tests/audit/holdout.py``, a batch written before round two and not tuned on).

A labelled point is one of: the verdict (a tuple label is a group of verdicts accepted), the
parametrization of one argument, the direction. Cases marked ``ambiguous`` count only their
params and direction. It prints each miss, the score, and the slowest function's time.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str):
    corpus_name = "kldiv_audit_held_out_corpus"
    if corpus_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(corpus_name, HERE / "corpus.py")
        sys.modules[corpus_name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[corpus_name])
    if name == "corpus":
        return sys.modules[corpus_name].CASES
    spec = importlib.util.spec_from_file_location("kldiv_audit_holdout", HERE / "holdout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CASES


def points(case, got: dict) -> list[tuple[str, bool]]:
    want = case.expected
    out = []
    if "verdict" in want and not case.ambiguous:
        v = want["verdict"]
        ok = got["verdict"] in v if isinstance(v, tuple) else got["verdict"] == v
        out.append((f"verdict {v!r}, got {got['verdict']!r}", ok))
    for name, space in want.get("params", {}).items():
        out.append(
            (
                f"params[{name}] {space!r}, got {got['params'].get(name)!r}",
                got["params"].get(name) == space,
            )
        )
    if "direction" in want:
        out.append(
            (
                f"direction {want['direction']!r}, got {got['direction']!r}",
                got["direction"] == want["direction"],
            )
        )
    return out


def main(which: str) -> int:
    import kldiv.audit as audit_module

    cases = load(which)
    total = right = 0
    slowest = (0.0, "")
    for case in cases:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = audit_module.audit(
                case.fn, case.kind, roles=case.roles, backend=case.backend, args=case.args
            )
        seconds = time.perf_counter() - start
        slowest = max(slowest, (seconds, case.name))
        for text, ok in points(case, report.to_dict()):
            total += 1
            right += ok
            if not ok:
                print(f"MISS {case.name}: {text}")
    print(
        f"{which}: {right}/{total} labelled points ({100 * right / total:.1f} %) on "
        f"{len(cases)} functions; slowest {slowest[1]} {slowest[0]:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "corpus"))
