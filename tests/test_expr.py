"""The expression grammar of the ``kldiv`` command (kldiv._expr): what parses, what is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kldiv
from kldiv import _expr
from kldiv._expr import ExpressionError, load_array, parse, parse_value


# ----------------------------------------------------------------------------------------------
# What parses
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("Normal(0, std=1)", "Normal(loc=0, std=1)"),
        ("Normal(loc=-1.5, var=4)", "Normal(loc=-1.5, var=4)"),
        ("  Normal( +2 , log_std=-0.25 )  ", "Normal(loc=2, log_std=-0.25)"),
        ("Normal(0, log_var=-inf)", "Normal(loc=0, log_var=-inf)"),
        ("Normal.standard()", "Normal.standard()"),
        ("Bernoulli(logits=1e-3)", "Bernoulli(logits=0.001)"),
        ("Categorical(probs=[0.5, 0.5, 0])", "Categorical(probs=[0.5, 0.5, 0. ])"),
        ("Categorical(logits=(0, -inf), axis=0)", "Categorical(logits=[  0., -inf], axis=0)"),
        (
            "MultivariateNormal([0, 1], scale_tril=[[1, 0], [0.5, 2]])",
            "MultivariateNormal(loc=[0., 1.], scale_tril=[[1. , 0. ], [0.5, 2. ]])",
        ),
    ],
)
def test_canonical_display(text: str, display: str) -> None:
    assert parse(text).display == display


def test_values_reach_the_spec_unchanged() -> None:
    n = parse("Normal(-3, log_var=[[1, 2.5]])").spec
    assert isinstance(n, kldiv.Normal)
    assert n.loc == -3 and isinstance(n.loc, int)
    assert n.param == "log_var"
    assert isinstance(n.log_var, np.ndarray) and n.log_var.dtype == np.float64
    np.testing.assert_array_equal(n.log_var, [[1.0, 2.5]])

    c = parse("Categorical(logits=[1, -inf, --2], axis=-1)").spec
    assert isinstance(c, kldiv.Categorical) and c.param == "logits" and c.axis == -1
    np.testing.assert_array_equal(c.logits, [1.0, -math.inf, 2.0])

    s = parse("Normal.standard()").spec
    assert isinstance(s, kldiv.Normal) and s.standard_ is True

    b = parse("Bernoulli(probs=0.25)").spec
    assert isinstance(b, kldiv.Bernoulli) and b.probs == 0.25

    m = parse("MultivariateNormal(loc=[0, 0], precision=[[2, 0], [0, 2]])").spec
    assert isinstance(m, kldiv.MultivariateNormal) and m.param == "precision"
    assert m.precision.shape == (2, 2)


def test_parse_value_for_masks() -> None:
    np.testing.assert_array_equal(parse_value("[[1, 0], [0, 1]]", name="--mask"), np.eye(2))
    assert parse_value("-inf", name="x") == -math.inf


# ----------------------------------------------------------------------------------------------
# What is refused, with one line that says why
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("", "empty expression"),
        ("Normal(0, std=1", "cannot parse"),
        ("Normal(0 std=1)", "cannot parse"),
        ("Normal(0, std=1); import os", "cannot parse"),
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "only Normal.standard() may be called"),
        ("open('x', 'w')", "unknown function 'open'"),
        ("eval('1')", "unknown function 'eval'"),
        ("Normal.__class__", "attribute access is not allowed"),
        ("Normal.__init__(0, std=1)", "only Normal.standard() may be called"),
        ("Normal.standard.__globals__", "attribute access"),
        ("Normal(0, std=Normal.__doc__)", "attribute access"),
        ("Normal(0, std=x)", "unknown name 'x'"),
        ("Normal(0, std=nan)", "unknown name 'nan'"),
        ("Normal(0, std=True)", "the constant True is not allowed"),
        ("Normal(0, std=None)", "the constant None"),
        ("Normal(0, std=1j)", "the constant 1j"),
        ("Normal(0, std='1')", "a string is not allowed"),
        ("Normal(0, std=b'1')", "the constant b'1'"),
        ("Normal(0, std=f'{1}')", "an f-string is not allowed"),
        ("Normal(0, std=1 + 1)", "arithmetic is not allowed"),
        ("Normal(0, std=2**10)", "arithmetic is not allowed"),
        ("Normal(0, std=[1, 2][0])", "indexing is not allowed"),
        ("Normal(0, std=(lambda: 1)())", "a lambda is not allowed"),
        ("Normal(0, std=[i for i in [1]])", "ListComp is not allowed"),
        ("Normal(0, std=(x := 1))", "an assignment expression is not allowed"),
        ("Normal(0, std=1 if 1 else 2)", "a conditional expression is not allowed"),
        ("Normal(0, std={1})", "a set is not allowed"),
        ("Normal(0, std=not 1)", "is not allowed"),
        ("Normal(0, std=-[1])", "a sign applies to a number only"),
        ("Normal(0, std=[[1, 2], [3]])", "rectangular"),
        ("Normal(0, std=[1, [2]])", "rectangular"),
        ("Normal(0, std=Normal(0, std=1))", "a call is not allowed as a value"),
        ("Normal(*[0], std=1)", "unpacking (*) is not allowed"),
        ("Normal(0, **{'std': 1})", "a dict is not allowed"),
        ("Normal(0, __class__=1)", "the keyword '__class__' is not allowed"),
        ("Normal(0, std=1, std=2)", "the keyword 'std' is given twice"),
        ("Normal(0, 1)", "too many positional arguments"),
        ("Normal(0, sigma=1)", "unexpected keyword argument 'sigma'"),
        ("Categorical([0.5, 0.5])", "keywords only"),
        ("Normal.standard(1)", "Normal.standard() with no arguments"),
        ("Normal", "expected a call"),
        ("[Normal(0, std=1)]", "expected a call"),
        ("Normal(0, std=[1, Normal])", "Normal must be called"),
        ("Gamma(1, 2)", "unknown function 'Gamma'"),
        ("Normal(0, std=1) @ x", "arithmetic is not allowed"),
        ("Normal(0, std=_kldiv_file_0)", "reserved"),
        ("Normal(0, std=1" + "0" * 400 + ")", "too large for a float64"),
    ],
)
def test_refused(text: str, phrase: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse(text, name="p")
    message = str(info.value)
    assert message.startswith("p: ")
    assert phrase in message
    assert "\n" not in message


def test_library_errors_name_the_side() -> None:
    with pytest.raises(kldiv.KLDivError, match=r"^q: Normal: expected exactly one scale"):
        parse("Normal(0, std=1, var=1)", name="q")
    with pytest.raises(kldiv.KLDivError, match=r"^p: axis: expected an int"):
        parse("Categorical(probs=[1], axis=0.5)", name="p")


def test_deep_nesting_is_one_error() -> None:
    with pytest.raises(ExpressionError, match="cannot parse"):
        parse("Normal(0, std=" + "[" * 500 + "1" + "]" * 500 + ")", name="p")


def test_refused_calls_run_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for text in ("open('pwned.txt', 'w')", "Normal(0, std=open('pwned.txt', 'w'))"):
        with pytest.raises(ExpressionError):
            parse(text)
    assert not (tmp_path / "pwned.txt").exists()


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def test_npy_reference(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("p.npy", np.array([0.25, 0.75], dtype=np.float32))
    parsed = parse("Categorical(probs=@p.npy)")
    assert parsed.display == "Categorical(probs=@p.npy)"
    assert parsed.files == ["p.npy"]
    assert parsed.spec.probs.dtype == np.float32  # floating arrays keep their dtype
    np.testing.assert_array_equal(parsed.spec.probs, [0.25, 0.75])


def test_file_paths_end_at_delimiters_or_quotes(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub dir").mkdir()
    np.save(tmp_path / "sub dir" / "mu.npy", np.array([1.0, 2.0]))
    np.save(tmp_path / "s.npy", np.array([3.0]))
    parsed = parse('Normal(@"sub dir/mu.npy",std=@s.npy)')
    assert parsed.files == ["sub dir/mu.npy", "s.npy"]
    assert parsed.display == 'Normal(loc=@"sub dir/mu.npy", std=@s.npy)'
    np.testing.assert_array_equal(parsed.spec.loc, [1.0, 2.0])
    np.testing.assert_array_equal(parsed.spec.std, [3.0])
    absolute = parse(f"Normal(0, std=@{tmp_path / 's.npy'})")
    np.testing.assert_array_equal(absolute.spec.std, [3.0])


def test_integer_and_bool_arrays(tmp_path) -> None:
    np.save(tmp_path / "i.npy", np.array([1, 2, 3]))
    np.save(tmp_path / "b.npy", np.array([True, False]))
    ints = load_array(str(tmp_path / "i.npy"))
    assert ints.dtype == np.float64
    np.testing.assert_array_equal(ints, [1.0, 2.0, 3.0])
    assert load_array(str(tmp_path / "b.npy"), as_float=False).dtype == np.bool_


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1,0.2,0.7\n", [0.1, 0.2, 0.7]),
        ("a,b,c\n0.1, 0.2 ,0.7\n", [0.1, 0.2, 0.7]),  # a header line is skipped
        ("\ufeffa,b\n1,2\n", [1.0, 2.0]),  # and a byte-order mark
        ("# comment\n\n0.1\n0.2\n0.7\n\n", [0.1, 0.2, 0.7]),  # one column: 1-D
        ("p,q\n0.5,0.5\n0.1,0.9\n", [[0.5, 0.5], [0.1, 0.9]]),  # rows x columns
        ("-inf,1e-300,3\n", [-math.inf, 1e-300, 3.0]),
        ("7\n", [7.0]),
    ],
)
def test_csv(tmp_path, text: str, expected: list) -> None:
    path = tmp_path / "a.csv"
    path.write_text(text, encoding="utf-8")
    arr = load_array(str(path))
    assert arr.dtype == np.float64
    np.testing.assert_array_equal(arr, np.asarray(expected))


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("a,b\nc,d\n1,2\n", "line 2: expected numbers separated by commas, got 'c,d'"),
        ("1,2\nx,3\n", "line 2: expected numbers separated by commas"),
        ("1,2\n3\n", "line 2: expected 2 numbers like the rows above, got 1"),
        ("1,2,\n", "expected numbers separated by commas, got none"),
        ("header\n", "got none"),
        ("", "got none"),
    ],
)
def test_bad_csv(tmp_path, text: str, phrase: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ExpressionError, match=r"bad\.csv") as info:
        load_array(str(path))
    assert phrase in str(info.value)


def test_bad_files(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("obj.npy", np.array([{}], dtype=object), allow_pickle=True)
    np.save("c.npy", np.array([1j]))
    np.save("s.npy", np.array(["a"]))
    np.savez("z.npz", a=np.ones(2))
    (tmp_path / "z.npz").rename(tmp_path / "z.npy")
    (tmp_path / "t.npy").write_bytes(b"not an array")
    (tmp_path / "latin.csv").write_bytes(b"\xe9,1\n1,2\n")
    (tmp_path / "d.npy").mkdir()
    (tmp_path / "h.txt").write_text("1,2\n")
    cases = {
        "missing.npy": "no such file",
        "missing.csv": "no such file",
        "h.txt": "expected a file ending in .npy or .csv, got '.txt'",
        "noext": "got 'no extension'",
        "obj.npy": "not a readable .npy array",
        "t.npy": "not a readable .npy array",
        "z.npy": "got an archive",
        "c.npy": "expected a numeric array, got dtype complex128",
        "s.npy": "expected a numeric array",
        "latin.csv": "expected UTF-8 text",
        "d.npy": "got a directory",
    }
    for name, phrase in cases.items():
        with pytest.raises(ExpressionError) as info:
            parse(f"Categorical(probs=@{name})", name="q")
        message = str(info.value)
        assert message.startswith(f"q: file '{name}'"), message
        assert phrase in message, message


def test_files_are_read_only_when_named_and_valid(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("a.npy", np.ones(2))
    reads = []
    real = _expr.load_array
    monkeypatch.setattr(_expr, "load_array", lambda *a, **k: reads.append(a) or real(*a, **k))
    parse("Normal(0, std=1)")
    with pytest.raises(ExpressionError):  # refused before anything is read
        parse("Normal(0, std=@a.npy) + 1")
    with pytest.raises(ExpressionError):
        parse("Normal(0, std=[@a.npy])")
    assert reads == []
    parse("Normal(0, std=@a.npy)")
    assert reads == [("a.npy",)]


def test_format_array_keeps_every_digit() -> None:
    assert _expr.format_array(np.array(0.1) + 0.2) == "0.30000000000000004"
    assert _expr.format_array(np.array([1e-300, 2.0])) == "[1.e-300, 2.e+000]"
    assert _expr.format_array(np.float32(1) / 3) == "0.33333334"
