"""``kldiv estimate X Y``: output, JSON, progress bar, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kldiv
from kldiv.cli import main


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (1500, 2)), rng.normal(1, 1, (1200, 2))
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", y, delimiter=",", header="a,b", comments="")
    return tmp_path, x, y


def test_text_and_json(files, capsys):
    d, x, y = files
    assert main(["estimate", str(d / "x.npy"), str(d / "y.csv")]) == 0
    out = capsys.readouterr().out
    expected = kldiv.from_samples(x, y).value
    assert "1500 samples of dimension 2" in out and "1200 samples" in out
    assert f"KL(P || Q) ≈ {expected:.6g} nats" in out
    args = ["estimate", str(d / "x.npy"), str(d / "y.csv"), "--json", "--k", "3", "--base", "2"]
    assert main([*args, "--bootstrap", "5"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kl"] == pytest.approx(kldiv.from_samples(x, y, k=3, base=2).value, rel=1e-12)
    assert record["units"] == "bits" and record["k"] == 3 and len(record["interval"]) == 2


def test_rounded_data_note_and_progress(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.savetxt(tmp_path / "x.csv", np.round(rng.normal(0, 1, 500), 1))
    np.savetxt(tmp_path / "y.csv", np.round(rng.normal(1, 1, 500), 1))
    args = ["estimate", str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]
    assert main([*args, "--progress", "always"]) == 0
    captured = capsys.readouterr()
    assert "note: repeated points were dequantized" in captured.out
    assert "100.0%" in captured.err and "[" in captured.err
    assert main([*args, "--progress", "never", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dequantized"] is True and captured.err == ""


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--k", "0"], "k: expected a positive int, got 0"),
        (["--base", "one"], "--base: expected e, 2, 10 or a positive number"),
        (["--base", "1"], "--base: expected a positive number other than 1"),
        (["--bootstrap", "-2"], "bootstrap: expected a non-negative int"),
    ],
)
def test_errors_are_one_line_with_status_2(files, capsys, extra, match):
    d, _, _ = files
    assert main(["estimate", str(d / "x.npy"), str(d / "y.csv"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kldiv: error: ") and match in err and err.count("\n") == 1


def test_file_errors(files, capsys):
    d, _, _ = files
    np.save(d / "one.npy", np.zeros(10))
    for args, match in (
        ([str(d / "missing.npy"), str(d / "x.npy")], "X: file"),
        ([str(d / "x.npy"), str(d / "y.txt")], "expected a file ending in .npy or .csv"),
        ([str(d / "one.npy"), str(d / "x.npy")], "y: expected samples of dimension 1"),
    ):
        assert main(["estimate", *args]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
