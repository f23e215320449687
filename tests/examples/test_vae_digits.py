"""examples/vae_digits.py runs (in --quick mode), prints its table and writes valid PNG plots;
the thumbnails committed under docs/_static/vae_digits/ are those plots, made smaller."""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vae_digits.py"
THUMBNAILS = ROOT / "docs" / "_static" / "vae_digits"
PLOTS = ("loss_curves.png", "kl_per_dim.png", "reconstructions.png")
COLUMNS = ["epoch", "beta", "recon", "kl", "test_recon", "test_kl", "active", "time_s"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_digits")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from a PNG's header; asserts the signature and the IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk"
    return struct.unpack(">II", head[16:24])


def test_prints_the_table(quick_run):
    _, stdout = quick_run
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    assert lines[header].split() == COLUMNS
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [int(r[0]) for r in rows] == [1, 2, 3]  # --quick: 3 epochs
    for r in rows:
        assert len(r) == len(COLUMNS)
        values = [float(v) for v in r]
        assert 0.0 <= values[1] <= 1.0  # beta
        assert values[2] > 0 and values[4] > 0  # reconstruction terms
        assert values[3] >= 0 and values[5] >= 0  # KL is never negative
        assert 0 <= int(r[6]) <= 8  # active units of 8
    assert "wrote loss_curves.png, kl_per_dim.png, reconstructions.png" in stdout


@pytest.mark.parametrize("name", PLOTS)
def test_writes_valid_pngs(quick_run, name):
    import matplotlib.image

    out, _ = quick_run
    path = out / name
    width, height = png_size(path)
    assert width >= 300 and height >= 100
    image = matplotlib.image.imread(path)  # decodes the whole file
    assert image.shape[:2] == (height, width)


def test_committed_thumbnails_are_the_examples_plots(quick_run):
    out, _ = quick_run
    assert sorted(p.name for p in THUMBNAILS.glob("*.png")) == sorted(PLOTS)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(PLOTS)
    for name in PLOTS:
        tw, th = png_size(THUMBNAILS / name)
        ew, eh = png_size(out / name)
        # same figure (so the same aspect ratio), at the thumbnails' lower resolution
        assert tw / th == pytest.approx(ew / eh, rel=0.02), name
        assert tw <= ew and tw <= 800, name
        assert (THUMBNAILS / name).stat().st_size < 150_000, name
