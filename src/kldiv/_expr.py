"""The expression grammar of the ``kldiv`` command: spec calls over literals and files.

An expression is one call, parsed with :mod:`ast` and interpreted node by node against a short
whitelist; user text is never given to ``eval``, ``exec`` or ``compile``::

    call    := Normal(args) | Normal.standard() | MultivariateNormal(args)
             | Categorical(args) | Bernoulli(args)
    args    := value, ... , name=value, ...      (as the Python constructor takes them)
    value   := number | +value | -value | inf | [value, ...] | (value, ...) | @path
    number  := an int or float literal (not bool, not complex)

Lists and tuples become float64 NumPy arrays (they must be rectangular). ``@path`` reads an array
from a file, and only files named this way are read:

- ``.npy``: :func:`numpy.load` with ``allow_pickle=False``; it must hold a numeric array;
- ``.csv``: numbers separated by commas, one row per line. Blank lines and lines starting with
  ``#`` are skipped; a first line that is not all numbers is skipped as a header (any later one
  is an error). One row or one column reads as a 1-D array, otherwise rows x columns (2-D).

Integer and boolean arrays from files become float64; floating arrays keep their dtype. A path
runs up to the next ``,``, ``)``, ``]`` or whitespace, or is quoted (``@"my file.csv"``); it is
relative to the current directory, and ``~`` is expanded.

Every problem raises :class:`ExpressionError` (a :class:`kldiv.KLDivError`) with a one-line
message.

>>> parse("Normal(0, std=1)").display
'Normal(loc=0, std=1)'
>>> parse("Categorical(logits=[0, -inf])").display
'Categorical(logits=[  0., -inf])'
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dists import Bernoulli, Categorical, Distribution, MultivariateNormal, Normal
from .errors import KLDivError

#: The spec classes an expression may call, by name.
FAMILIES: dict[str, type[Distribution]] = {
    "Normal": Normal,
    "MultivariateNormal": MultivariateNormal,
    "Categorical": Categorical,
    "Bernoulli": Bernoulli,
}

#: The node types an expression may contain at all (checked before it is interpreted).
ALLOWED_NODES = (
    ast.Expression,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Attribute,
    ast.keyword,
    ast.Constant,
    ast.UnaryOp,
    ast.UAdd,
    ast.USub,
    ast.List,
    ast.Tuple,
)

FILE_SUFFIXES = (".npy", ".csv")

_PLACEHOLDER = "_kldiv_file_"
_FILE_TOKEN = re.compile(r"""@(?:"([^"]*)"|'([^']*)'|([^,)\]\s]+))""")


class ExpressionError(KLDivError):
    """A bad ``kldiv`` command-line expression, file reference or file (one-line message)."""


@dataclass
class FileArray:
    """An array read from a file named as ``@path``; it shows as ``@path``."""

    path: str
    array: np.ndarray


@dataclass
class Parsed:
    """A parsed expression: the spec, its canonical text and the files it read."""

    spec: Distribution
    display: str
    files: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def load_array(path: str, *, what: str = "file", as_float: bool = True) -> np.ndarray:
    """Read a numeric array from a ``.npy`` or ``.csv`` file (see the module doc).

    ``as_float`` turns integer and boolean arrays into float64 (a mask keeps its dtype).
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_SUFFIXES:
        raise ExpressionError(
            f"{what} {path!r}: expected a file ending in .npy or .csv, "
            f"got {suffix or 'no extension'!r}"
        )
    full = os.path.expanduser(path)
    try:
        label = f"{what} {path!r}"
        arr = _load_npy(label, full) if suffix == ".npy" else _load_csv(label, full)
    except FileNotFoundError:
        raise ExpressionError(
            f"{what} {path!r}: no such file (relative paths are relative to {os.getcwd()})"
        ) from None
    except IsADirectoryError:
        raise ExpressionError(f"{what} {path!r}: expected a file, got a directory") from None
    except OSError as err:
        raise ExpressionError(f"{what} {path!r}: cannot read it ({err.strerror or err})") from None
    if arr.dtype.kind in "biu" and as_float:
        arr = arr.astype(np.float64)
    elif arr.dtype.kind not in "biuf":
        raise ExpressionError(f"{what} {path!r}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def _load_npy(label: str, full: str) -> np.ndarray:
    try:
        arr = np.load(full, allow_pickle=False)
    except ValueError as err:  # pickled data, a bad header
        raise ExpressionError(f"{label}: not a readable .npy array ({err})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under a .npy name
        if hasattr(arr, "close"):
            arr.close()
        raise ExpressionError(f"{label}: expected one .npy array, got an archive")
    return arr


def _load_csv(label: str, full: str) -> np.ndarray:
    try:
        with open(full, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise ExpressionError(f"{label}: expected UTF-8 text") from None
    rows: list[list[float]] = []
    first = True
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            row = [float(s) for s in text.split(",")]
        except ValueError:
            if first:
                first = False
                continue  # the header line
            raise ExpressionError(
                f"{label} line {number}: expected numbers separated by commas, got {text[:60]!r}"
            ) from None
        if rows and len(row) != len(rows[0]):
            raise ExpressionError(
                f"{label} line {number}: expected {len(rows[0])} "
                f"numbers like the rows above, got {len(row)}"
            )
        first = False
        rows.append(row)
    if not rows:
        raise ExpressionError(f"{label}: expected numbers separated by commas, got none")
    arr = np.asarray(rows, dtype=np.float64)
    if arr.shape[0] == 1 or arr.shape[1] == 1:
        arr = arr.reshape(-1)
    return arr


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------
def parse(text: str, *, name: str = "expression") -> Parsed:
    """Parse one spec expression; ``name`` (``"p"``, ``"q"``) prefixes error messages.

    >>> parse("Bernoulli(probs=0.25)").spec
    Bernoulli(probs=0.25)
    >>> try:
    ...     parse("Normal(0, std=x)", name="p")
    ... except ExpressionError as err:
    ...     print(str(err).split(";")[0])
    p: unknown name 'x'
    """
    return _Parser(text, name).run()


def parse_value(text: str, *, name: str) -> Any:
    """Parse one value (a number, a list or ``@path``), e.g. a ``--mask`` literal."""
    return _Parser(text, name).run_value()


class _Parser:
    def __init__(self, text: str, name: str) -> None:
        self.original = text
        self.name = name
        self.paths: list[str] = []

    # -- entry points -----------------------------------------------------------------------
    def run(self) -> Parsed:
        tree = self._tree()
        body = tree.body
        if isinstance(body, ast.Attribute):
            raise self._error(body, "attribute access is not allowed (only Normal.standard())")
        if not isinstance(body, ast.Call):
            raise self._error(
                body,
                "expected a call such as Normal(0, std=1) or Categorical(probs=[0.5, 0.5]), got",
            )
        spec, display = self._call(body)
        return Parsed(spec, display, list(self.paths))

    def run_value(self) -> Any:
        value = self._value(self._tree().body)
        return value.array if isinstance(value, FileArray) else value

    # -- helpers ------------------------------------------------------------------------------
    def _tree(self) -> ast.Expression:
        text = self.original
        if not text.strip():
            raise ExpressionError(f"{self.name}: empty expression")
        if _PLACEHOLDER in text:
            raise ExpressionError(f"{self.name}: {_PLACEHOLDER!r} is a reserved name")
        source = _FILE_TOKEN.sub(self._substitute, text)
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as err:
            where = f" at column {err.offset}" if err.offset and not self.paths else ""
            raise ExpressionError(
                f"{self.name}: cannot parse {self._short()!r}: {err.msg}{where}"
            ) from None
        except (ValueError, RecursionError, MemoryError) as err:
            detail = str(err).split(":")[0] if isinstance(err, ValueError) else ""
            raise ExpressionError(
                f"{self.name}: cannot parse {self._short()!r}: {detail or type(err).__name__}"
            ) from None
        for node in ast.walk(tree):
            if not isinstance(node, ALLOWED_NODES):
                raise self._error(node, f"{_describe(node)} is not allowed{_hint(node)}")
        return tree

    def _substitute(self, match: re.Match[str]) -> str:
        path = next(g for g in match.groups() if g is not None)
        self.paths.append(path)
        return f" {_PLACEHOLDER}{len(self.paths) - 1} "

    def _snippet(self, node: ast.AST) -> str:
        try:
            text = ast.unparse(node)
        except Exception:  # pragma: no cover - unparse handles every node ast.parse makes
            text = type(node).__name__
        for i, path in enumerate(self.paths):
            text = re.sub(rf"\b{_PLACEHOLDER}{i}\b", lambda _m, p=path: "@" + p, text)
        return text if len(text) <= 60 else text[:57] + "..."

    def _short(self) -> str:
        text = " ".join(self.original.split())
        return text if len(text) <= 80 else text[:77] + "..."

    def _error(self, node: ast.AST | None, message: str) -> ExpressionError:
        """``name: message: 'snippet' (in 'expression')``, one line."""
        text = self._short()
        snippet = None if node is None else self._snippet(node)
        at = "" if snippet is None else f"{'' if message.endswith('got') else ':'} {snippet!r}"
        where = "" if snippet == text else f" (in {text!r})"
        return ExpressionError(f"{self.name}: {message}{at}{where}")

    # -- the grammar --------------------------------------------------------------------------
    def _call(self, node: ast.Call) -> tuple[Distribution, str]:
        func = node.func
        if isinstance(func, ast.Name) and func.id in FAMILIES:
            label, factory = func.id, FAMILIES[func.id]
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "Normal"
            and func.attr == "standard"
        ):
            label, factory = "Normal.standard", Normal.standard
        elif isinstance(func, ast.Name):
            raise self._error(
                None,
                f"unknown function {func.id!r}; expected one of Normal, "
                "Normal.standard, MultivariateNormal, Categorical, Bernoulli",
            )
        else:
            raise self._error(func, "only Normal.standard() may be called as an attribute, got")
        args = [self._value(a) for a in node.args]
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise self._error(kw, "keyword unpacking (**) is not allowed")
            if kw.arg.startswith("_"):
                raise self._error(None, f"the keyword {kw.arg!r} is not allowed")
            if kw.arg in kwargs:
                raise self._error(None, f"the keyword {kw.arg!r} is given twice")
            kwargs[kw.arg] = self._value(kw.value)
        try:
            bound = inspect.signature(factory).bind(*args, **kwargs)
        except TypeError as err:
            raise self._error(None, f"{label}(...): {err}; expected {_SIGNATURES[label]}") from None
        try:
            spec = factory(**{k: _plain(v) for k, v in bound.arguments.items()})
        except KLDivError as err:
            raise KLDivError(f"{self.name}: {err}") from None
        parts = ", ".join(f"{k}={_show(v)}" for k, v in bound.arguments.items())
        return spec, f"{label}({parts})"

    def _value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if isinstance(value, str):
                    raise self._error(
                        node,
                        "a string is not allowed (to read an array from a "
                        "file, write @path, without quotes before the @)",
                    )
                raise self._error(None, f"the constant {value!r} is not allowed (numbers only)")
            try:
                float(value)
            except OverflowError:
                raise self._error(None, "an integer too large for a float64") from None
            return value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            value = self._value(node.operand)
            if not isinstance(value, (int, float)):
                raise self._error(node, "a sign applies to a number only, got")
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name):
            if node.id == "inf":
                return math.inf
            if node.id.startswith(_PLACEHOLDER):
                path = self.paths[int(node.id[len(_PLACEHOLDER) :])]
                return FileArray(path, load_array(path, what=f"{self.name}: file"))
            if node.id in FAMILIES:
                raise self._error(None, f"{node.id} must be called, as in {_SIGNATURES[node.id]}")
            raise self._error(
                None, f"unknown name {node.id!r}; the only name allowed as a value is inf"
            )
        if isinstance(node, (ast.List, ast.Tuple)):
            nested = self._nested(node)
            try:
                return np.asarray(nested, dtype=np.float64)
            except ValueError:
                raise self._error(
                    node, "expected a rectangular list (rows of equal length), got"
                ) from None
        raise self._error(node, f"{_describe(node)} is not allowed as a value{_hint(node)}")

    def _nested(self, node: ast.AST) -> Any:
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._nested(e) for e in node.elts]
        if isinstance(node, ast.Name) and node.id.startswith(_PLACEHOLDER):
            raise self._error(node, "a file may be a whole argument only, not a list item, got")
        value = self._value(node)
        if not isinstance(value, (int, float)):
            raise self._error(node, "a list may hold numbers and lists only, got")
        return value


_SIGNATURES = {
    "Normal": "Normal(loc, std= | var= | log_std= | log_var=)",
    "Normal.standard": "Normal.standard() with no arguments",
    "MultivariateNormal": "MultivariateNormal(loc, scale_tril= | covariance= | precision=)",
    "Categorical": "Categorical(probs= | logits= | log_probs=, axis=-1), keywords only",
    "Bernoulli": "Bernoulli(probs= | logits=), keywords only",
}

_NODE_WORDS = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.BinOp: "arithmetic",
    ast.BoolOp: "a boolean operator",
    ast.Compare: "a comparison",
    ast.Lambda: "a lambda",
    ast.Starred: "unpacking (*)",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.JoinedStr: "an f-string",
    ast.IfExp: "a conditional expression",
    ast.NamedExpr: "an assignment expression",
    ast.Call: "a call",
}


def _describe(node: ast.AST) -> str:
    for kind, words in _NODE_WORDS.items():
        if isinstance(node, kind):
            return words
    return f"the syntax {type(node).__name__}"


def _hint(node: ast.AST) -> str:
    if isinstance(node, ast.BinOp):
        return " (write each number as a literal)"
    if isinstance(node, ast.Call):
        return " (only the top level is a call)"
    return ""


def _plain(value: Any) -> Any:
    return value.array if isinstance(value, FileArray) else value


def _show(value: Any) -> str:
    """A value as an expression would write it: numbers, numpy-style lists, ``@path``."""
    if isinstance(value, FileArray):
        path = value.path
        return f"@{path}" if re.fullmatch(r"[^,)\]\s\"']+", path) else f'@"{path}"'
    if isinstance(value, np.ndarray):
        return format_array(value, threshold=64).replace("\n", "")
    return repr(value)


def format_array(value: Any, *, prefix: str = "", threshold: int = 1000) -> str:
    """An array (or scalar) in NumPy's style with ``, `` separators, every digit kept.

    >>> format_array(np.array([0.5, 0.25]))
    '[0.5 , 0.25]'
    >>> format_array(np.float64(0.1) + np.float64(0.2))
    '0.30000000000000004'
    """
    return np.array2string(
        np.asarray(value),
        separator=", ",
        floatmode="unique",
        prefix=prefix,
        threshold=threshold,
        max_line_width=100,
    )
