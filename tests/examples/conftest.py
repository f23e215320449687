"""Helpers for the example tests: run an example in a subprocess, check PNGs, read constants."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, out: pathlib.Path, *extra: str) -> str:
    """Run ``examples/<name>.py --quick --out <out>``; returns its stdout (asserts exit 0)."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / f"{name}.py"),
            "--quick",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_valid_png(path: pathlib.Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path}: no IHDR chunk"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 100 and height >= 100, f"{path}: {width}x{height}"
    assert data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82"), f"{path}: truncated"


def load_example(name: str):
    """Import an example as a module (without running main) to read its constants."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def examples():
    """The helpers, as one namespace: run, assert_png, load, root."""

    class Helpers:
        run = staticmethod(run_example)
        assert_png = staticmethod(assert_valid_png)
        load = staticmethod(load_example)
        root = ROOT

    return Helpers
