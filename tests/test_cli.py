"""The ``kldiv`` command line, run in-process through ``main(argv)`` (plus one real process).

Every value is checked against a reference written here from the textbook formula (mpmath at
50 digits, or scipy), never against kldiv itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
from scipy.special import expit, softmax
from scipy.stats import entropy

import kldiv
from kldiv.cli import main

mp.mp.dps = 50


# ----------------------------------------------------------------------------------------------
# References and helpers
# ----------------------------------------------------------------------------------------------
def kl_normal_ref(mu_p: float, var_p, mu_q: float, var_q) -> float:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)) by the textbook formula, in mpmath."""
    mu_p, mu_q, var_p, var_q = (mp.mpf(x) for x in (mu_p, mu_q, var_p, var_q))
    return float((var_p / var_q + (mu_p - mu_q) ** 2 / var_q - 1 + mp.log(var_q / var_p)) / 2)


def kl_bernoulli_ref(p: float, q: float) -> float:
    p, q = mp.mpf(p), mp.mpf(q)
    return float(p * mp.log(p / q) + (1 - p) * mp.log((1 - p) / (1 - q)))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def value_of(out: str, label: str = "KL(p || q)") -> float:
    """The number on the line ``label = ... nats``."""
    for line in out.splitlines():
        if line.startswith(f"{label} = "):
            return float(line[len(label) + 3 :].split(" nats")[0])
    raise AssertionError(f"no {label!r} line in:\n{out}")


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert (code, err) == (0, ""), err
    return json.loads(out)


def assert_one_error_line(code: int, out: str, err: str, phrase: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kldiv: error: "), err
    assert "Traceback" not in err
    assert phrase in lines[0], err


def mvn_works() -> bool:
    try:
        kldiv.kl(
            kldiv.MultivariateNormal(np.zeros(2), covariance=np.eye(2)),
            kldiv.MultivariateNormal(np.zeros(2), covariance=np.eye(2)),
        )
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Each family, in text and JSON
# ----------------------------------------------------------------------------------------------
def test_normal_text(capsys) -> None:
    code, out, err = run(capsys, "kl", "Normal(0, std=1)", "Normal(1, std=2)")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == [
        "p = Normal(loc=0, std=1)",
        "q = Normal(loc=1, std=2)",
        "KL = log(σq/σp) + (σp² + (μp − μq)²) / (2σq²) − 1/2",
    ]
    assert lines[3].startswith("KL(p || q) = 0.44314718055994") and lines[3].endswith(" nats")
    assert value_of(out) == pytest.approx(kl_normal_ref(0, 1, 1, 4), rel=1e-12, abs=0)


@pytest.mark.parametrize(
    ("p", "q", "ref"),
    [
        ("Normal(0.5, var=0.3)", "Normal(-1, var=2)", (0.5, 0.3, -1, 2)),
        ("Normal(0.5, log_std=-0.7)", "Normal(0, log_var=1)", (0.5, mp.e**-1.4, 0, mp.e)),
        ("Normal(2, std=3)", "Normal.standard()", (2, 9, 0, 1)),
        ("Normal(0, std=1)", "Normal(0, std=1.0001)", (0, 1, 0, mp.mpf(1.0001) ** 2)),
    ],
)
def test_normal_parametrizations(capsys, p: str, q: str, ref: tuple) -> None:
    data = run_json(capsys, "kl", p, q)
    assert data["kl"] == pytest.approx(kl_normal_ref(*ref), rel=1e-14, abs=0)
    assert data["formula"].startswith("KL = log(σq/σp)")


def test_categorical(capsys) -> None:
    p = [0.5, 0.5, 0.0]
    logits = [0.0, 1.0, 2.0]
    code, out, _ = run(capsys, "kl", f"Categorical(probs={p})", f"Categorical(logits={logits})")
    assert code == 0
    assert "KL = Σᵢ pᵢ log(pᵢ / qᵢ)" in out.splitlines()
    assert value_of(out) == pytest.approx(entropy(p, softmax(logits)), rel=1e-14)
    # The other direction: q has mass where p has none.
    code, out, _ = run(capsys, "kl", f"Categorical(logits={logits})", f"Categorical(probs={p})")
    assert code == 0 and value_of(out) == math.inf
    assert "KL(p || q) = inf nats" in out


def test_categorical_batch_and_axis(capsys) -> None:
    p = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])  # classes along axis 0 when transposed
    q = np.array([0.2, 0.8])
    data = run_json(
        capsys,
        "kl",
        f"Categorical(probs={p.T.tolist()}, axis=0)",
        f"Categorical(log_probs={np.log(q).reshape(2, 1).tolist()}, axis=0)",
    )
    expected = [entropy(row, q) for row in p]
    assert np.allclose(data["kl"], expected, rtol=1e-13, atol=0)
    assert len(data["kl"]) == 3 and data["reduction"] == "none"


def test_categorical_minus_inf_logits(capsys) -> None:
    data = run_json(capsys, "kl", "Categorical(logits=[0, -inf])", "Categorical(probs=[0.3, 0.7])")
    assert data["kl"] == pytest.approx(math.log(1 / 0.3), rel=1e-14)


def test_bernoulli(capsys) -> None:
    data = run_json(capsys, "kl", "Bernoulli(probs=[0.3, 0.9])", "Bernoulli(logits=[0, 2.5])")
    q = expit([0.0, 2.5])
    expected = [kl_bernoulli_ref(0.3, q[0]), kl_bernoulli_ref(0.9, q[1])]
    assert np.allclose(data["kl"], expected, rtol=1e-13, atol=0)
    assert data["formula"] == "KL = p log(p / q) + (1 − p) log((1 − p) / (1 − q))"


@pytest.mark.skipif(not mvn_works(), reason="kl(MultivariateNormal, MultivariateNormal) missing")
def test_multivariate_normal(capsys) -> None:
    mu_p, mu_q = np.array([0.0, 1.0]), np.array([1.0, -0.5])
    cov_p = np.array([[2.0, 0.3], [0.3, 1.0]])
    tril_q = np.array([[1.5, 0.0], [0.4, 0.8]])
    cov_q = tril_q @ tril_q.T
    inv_q = np.linalg.inv(cov_q)
    d = mu_q - mu_p
    expected = 0.5 * (
        np.trace(inv_q @ cov_p)
        + d @ inv_q @ d
        - 2
        + np.log(np.linalg.det(cov_q))
        - np.log(np.linalg.det(cov_p))
    )
    code, out, _ = run(
        capsys,
        "kl",
        f"MultivariateNormal({mu_p.tolist()}, covariance={cov_p.tolist()})",
        f"MultivariateNormal({mu_q.tolist()}, scale_tril={tril_q.tolist()})",
    )
    assert code == 0
    assert (
        "KL = ½[tr(Σq⁻¹Σp) + (μq − μp)ᵀΣq⁻¹(μq − μp) − k + log det Σq − log det Σp]"
        in out.splitlines()
    )
    assert value_of(out) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Files, options, JSON
# ----------------------------------------------------------------------------------------------
def test_files_npy_and_csv(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = np.array([0.2, 0.3, 0.5])
    q = np.array([0.25, 0.25, 0.5])
    np.save("hist_a.npy", p)
    Path("hist_b.csv").write_text("cat,dog,bird\n0.25,0.25,0.5\n", encoding="utf-8")
    code, out, err = run(
        capsys, "kl", "Categorical(probs=@hist_a.npy)", "Categorical(probs=@hist_b.csv)"
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == [
        "p = Categorical(probs=@hist_a.npy)",
        "q = Categorical(probs=@hist_b.csv)",
    ]
    assert value_of(out) == pytest.approx(entropy(p, q), rel=1e-14)


def test_files_2d_csv_with_mask_file(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mu = np.array([[0.5, -1.0, 0.2], [0.0, 2.0, 1.0]])
    lv = np.array([[-1.0, 0.5, 0.0], [0.3, 0.0, -2.0]])
    np.savetxt("mu.csv", mu, delimiter=",")
    np.save("lv.npy", lv)
    np.save("mask.npy", np.array([[True, True, False], [True, False, True]]))
    elem = 0.5 * (mu**2 + np.exp(lv) - 1 - lv)  # KL(N(mu, e^lv) || N(0, 1)) per element
    mask = np.load("mask.npy")
    for reduction, expected in [
        ("sum", (elem * mask).sum()),
        ("mean", (elem * mask).sum() / mask.sum()),
        ("batchmean", (elem * mask).sum() / 2),
    ]:
        data = run_json(
            capsys,
            "kl",
            "Normal(@mu.csv, log_var=@lv.npy)",
            "Normal.standard()",
            "--mask",
            "@mask.npy",
            "--reduction",
            reduction,
        )
        assert data["kl"] == pytest.approx(expected, rel=1e-13), reduction
        assert data["mask"] == "@mask.npy" and data["reduction"] == reduction
    # A path without @, a 0/1 csv mask, and --normalizer.
    Path("m.csv").write_text("1,1,0\n1,0,1\n", encoding="utf-8")
    data = run_json(
        capsys,
        "kl",
        "Normal(@mu.csv, log_var=@lv.npy)",
        "Normal.standard()",
        "--mask",
        "m.csv",
        "--reduction",
        "sum",
        "--normalizer",
        "8",
    )
    assert data["kl"] == pytest.approx((elem * mask).sum() / 8, rel=1e-13)
    assert data["normalizer"] == 8.0 and data["mask"] == "@m.csv"


def test_event_axis_and_vits_mask(capsys) -> None:
    mu = np.array([[[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]], [[0.5, 0.5, 0.5], [0.0, 0.0, 2.0]]])
    std = np.full(mu.shape, 0.5)
    elem = np.log(1 / std) + (std**2 + mu**2) / 2 - 0.5  # against N(0, 1)
    p, q = f"Normal({mu.tolist()}, std={std.tolist()})", "Normal.standard()"
    # event_axis=1 sums channels: per-(B, T) values.
    data = run_json(capsys, "kl", p, q, "--event-axis", "1")
    assert np.allclose(data["kl"], elem.sum(axis=1), rtol=1e-13, atol=0)
    assert data["event_axis"] == 1
    # The same axes as a comma list, as repeats, and negative.
    expected = elem.sum(axis=(1, 2))
    for argv in (
        ["--event-axis", "1,2"],
        ["--event-axis", "1", "--event-axis", "2"],
        ["--event-axis=-1,-2"],
    ):
        data = run_json(capsys, "kl", p, q, *argv)
        assert np.allclose(data["kl"], expected, rtol=1e-13, atol=0), argv
    # VITS: z_mask of shape (B, 1, T), mean over unmasked frames.
    z_mask = np.array([[[1, 1, 0]], [[1, 0, 0]]])
    data = run_json(
        capsys,
        "kl",
        p,
        q,
        "--event-axis",
        "1",
        "--mask",
        str(z_mask.tolist()),
        "--reduction",
        "mean",
    )
    per = elem.sum(axis=1) * z_mask[:, 0, :]
    assert data["kl"] == pytest.approx(per.sum() / z_mask.sum(), rel=1e-13)


def test_text_output_with_options_and_arrays(capsys) -> None:
    code, out, _ = run(
        capsys,
        "kl",
        "Normal([[0, 1], [2, 3]], std=1)",
        "Normal.standard()",
        "--reduction",
        "none",
        "--event-axis",
        "0",
        "--validate",
    )
    assert code == 0
    assert "options: event_axis=0, validate=True" in out
    assert "KL(p || q) = [2., 5.] nats  (shape (2,))" in out  # (0 + 4) / 2, (1 + 9) / 2


def test_json_shape_and_non_finite(capsys) -> None:
    data = run_json(
        capsys, "kl", "Categorical(probs=[[0.5, 0.5], [1, 0]])", "Categorical(probs=[1, 0])"
    )
    assert set(data) == {
        "p",
        "q",
        "kl",
        "units",
        "reduction",
        "event_axis",
        "mask",
        "normalizer",
        "formula",
    }
    assert data["kl"] == ["inf", 0.0]
    assert data["p"] == "Categorical(probs=[[0.5, 0.5], [1. , 0. ]])"
    assert data["q"] == "Categorical(probs=[1., 0.])"
    assert data["units"] == "nats" and data["event_axis"] is None and data["mask"] is None


def test_validate_reports_the_bad_value(capsys) -> None:
    argv = ("kl", "Categorical(probs=[0.5, 0.6])", "Categorical(probs=[0.5, 0.5])")
    assert run(capsys, *argv)[0] == 0  # without --validate the values are not read
    assert_one_error_line(*run(capsys, *argv, "--validate"), "sum of p.probs along axis -1")


# ----------------------------------------------------------------------------------------------
# --examples, usage, help, version
# ----------------------------------------------------------------------------------------------
def test_examples(capsys) -> None:
    code, out, err = run(capsys, "kl", "--examples")
    assert (code, err) == (0, "")
    blocks = out.split("\n\n")
    assert len(blocks) == 4
    for i, block in enumerate(blocks, start=1):
        assert block.startswith(f"Example {i}: ")
        assert "\n  $ kldiv kl " in block and "\n  lesson: " in block
    values = [value_of(b.replace("\n  ", "\n")) for b in blocks]
    assert values[0] == kl_normal_ref(0, 1, 1, 4)
    mu = np.array([[0.5, -1.0], [0.0, 2.0]])
    lv = np.array([[-1.0, 0.5], [0.0, 0.0]])
    assert values[1] == pytest.approx(
        (0.5 * (mu**2 + np.exp(lv) - 1 - lv)).sum(-1).mean(), rel=1e-14
    )
    assert values[2] == pytest.approx(entropy([0.5, 0.5, 0], softmax([0, 1, 2])), rel=1e-14)
    assert "KL(q || p) = inf nats" in blocks[2]
    assert values[3] == pytest.approx(kl_normal_ref(0, 1, 0, mp.mpf(1.0001) ** 2), rel=1e-15)


def test_examples_json(capsys) -> None:
    code, out, _ = run(capsys, "kl", "--examples", "--json")
    assert code == 0
    records = json.loads(out)
    assert [r["kl"] for r in records][:1] == [kl_normal_ref(0, 1, 1, 4)]
    assert records[2]["kl_reverse"] == "inf"
    assert all(r["lesson"] and r["command"].startswith("kldiv kl ") for r in records)


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["kl"], "--examples"),
        (["kl", "Normal(0, std=1)"], "expected two expressions"),
        (["kl", "--examples", "Normal(0, std=1)"], "--examples takes no expressions"),
        (["kl", "Normal(0, std=1)", "Normal(0, std=1)", "Normal(0, std=1)"], "unrecognized"),
        (["kl", "Normal(0, std=1)", "Normal(0, std=1)", "--reduction", "avg"], "invalid choice"),
        ([], "required"),
        (["estimate"], "required"),
    ],
)
def test_usage_errors(capsys, argv: list[str], phrase: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "usage: kldiv" in err and phrase in err


def test_help_and_version(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "usage: kldiv" in out and "kl" in out and "--version" in out
    code, out, _ = run(capsys, "kl", "--help")
    assert code == 0
    for phrase in (
        "KL(P || Q)",
        "--examples",
        "--event-axis",
        "--mask",
        "--reduction",
        "--normalizer",
        "--validate",
        "--json",
        "@path",
        "never evaluated",
    ):
        assert phrase in out, phrase
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"kldiv {kldiv.__version__}\n"


# ----------------------------------------------------------------------------------------------
# Errors: one line on stderr, exit status 2
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("p", "q", "extra", "phrase"),
    [
        ("Normal(0, std=1", "Normal.standard()", [], "p: cannot parse"),
        ("Normal.standard()", "__import__('os')", [], "q: unknown function '__import__'"),
        ("Normal.__class__", "Normal.standard()", [], "attribute access is not allowed"),
        ("Normal(0, std=sigma)", "Normal.standard()", [], "unknown name 'sigma'"),
        ("Normal(0, std=[1, 2][0])", "Normal.standard()", [], "indexing is not allowed"),
        ("Categorical(probs=@missing.npy)", "Categorical(probs=[1])", [], "no such file"),
        ("Categorical(probs=@hist.txt)", "Categorical(probs=[1])", [], "ending in .npy or .csv"),
        ("Normal(0, std=1, var=1)", "Normal.standard()", [], "exactly one scale keyword"),
        ("Normal(0, std=1)", "Categorical(probs=[1])", [], "no formula for p: Normal and q: Cat"),
        ("Categorical(probs=[0.5, 0.5])", "Categorical(probs=[1, 0, 0])", [], "broadcasts"),
        ("Normal(0, std=1)", "Normal.standard()", ["--normalizer", "0"], "normalizer: expected"),
        ("Normal(0, std=[1])", "Normal.standard()", ["--event-axis", "x"], "--event-axis"),
        ("Normal(0, std=[1])", "Normal.standard()", ["--event-axis", "3"], "event_axis:"),
        ("Normal(0, std=[1])", "Normal.standard()", ["--mask", "@nope.npy"], "--mask: file"),
        ("Normal(0, std=[1])", "Normal.standard()", ["--mask", "[1, x]"], "--mask: unknown name"),
        ("Normal(0, std=1)", "Normal.standard()", ["--reduction", "batchmean"], "batch axis"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, monkeypatch, p, q, extra, phrase) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_error_line(*run(capsys, "kl", p, q, *extra), phrase)


def test_unexpected_library_failure_is_one_line(capsys, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("kldiv.cli.kl", broken)
    assert_one_error_line(
        *run(capsys, "kl", "Normal(0, std=1)", "Normal.standard()"),
        "kl: unexpected ZeroDivisionError inside kldiv (boom)",
    )


def test_refused_code_never_runs(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    q = "Normal.standard()"
    # If either were evaluated, main would return 5 or create the file.
    assert_one_error_line(*run(capsys, "kl", "__import__('sys').exit(5)", q), "p:")
    assert_one_error_line(*run(capsys, "kl", "Normal(0, std=open('pwned', 'w'))", q), "p:")
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------
# The installed command, in a real process
# ----------------------------------------------------------------------------------------------
def _command() -> list[str]:
    script = shutil.which("kldiv", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "kldiv.cli"]


def test_console_script(tmp_path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    ok = subprocess.run(
        [*_command(), "kl", "Normal(0, std=1)", "Normal(1, std=2)", "--json"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["kl"] == pytest.approx(kl_normal_ref(0, 1, 1, 4), rel=1e-12, abs=0)
    bad = subprocess.run(
        [sys.executable, "-m", "kldiv.cli", "kl", "Normal(0, std=x)", "Normal(0, std=1)"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert_one_error_line(bad.returncode, bad.stdout, bad.stderr, "unknown name 'x'")
