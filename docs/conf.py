"""Sphinx configuration for kldiv's documentation.

Build (no network needed): ``sphinx-build -W -b html docs docs/_build/html``.
Pages are Markdown (MyST); the API reference is generated from docstrings by autodoc, with
napoleon reading their Google-style ``Args:``/``Returns:`` sections.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Document the working tree even when the package is not installed (a fresh clone).
sys.path.insert(0, str(ROOT / "src"))

import kldiv  # noqa: E402

project = "kldiv"
author = "kldiv developers"
copyright = "kldiv developers, MIT License"
version = release = kldiv.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: anchors for headings down to ###, so that pages can link to sections.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]

# autodoc + napoleon (Google style)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
# The docstrings say what each argument is; the annotations (mostly `Any`: arrays of any
# library) would only add noise.
autodoc_typehints = "none"
autodoc_preserve_defaults = True
# kldiv.torch needs torch to import. Where torch is not installed (`pip install -e ".[docs]"`
# alone), autodoc reads it against a mock of torch: the docstrings and signatures come from the
# source either way, so the pages are the same.
if importlib.util.find_spec("torch") is None:
    autodoc_mock_imports = ["torch"]

# Everything is local: the built-in theme, no intersphinx, no remote images.
html_theme = "alabaster"
html_title = f"kldiv {release}"
html_theme_options = {
    "description": "KL divergence that is correct, explicit and fast.",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_static_path: list[str] = []
html_show_sourcelink = False
pygments_style = "sphinx"
