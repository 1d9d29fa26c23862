"""Sphinx configuration for pytest-parexec's documentation (MyST Markdown, offline)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _version() -> str:
    """``pytest_parexec.__version__``, read from the source so the build needs no runtime deps."""
    tree = ast.parse((ROOT / "pytest_parexec" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets
        ):
            return str(ast.literal_eval(node.value))
    raise RuntimeError("pytest_parexec/__init__.py defines no __version__")


project = "pytest-parexec"
author = "pytest-parexec developers"
copyright = "pytest-parexec developers"
version = release = _version()

extensions = ["myst_parser"]
# "deflist" is part of myst-parser: term / ": definition" lists for options and summary lines.
myst_enable_extensions = ["deflist"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Links such as [options](api.md#options) resolve to headings up to this depth.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"pytest-parexec {release}"
html_theme_options = {
    "description": "Run a pytest session's expensive setup in parallel.",
    "fixed_sidebar": True,
}
# Pictures made by real runs (the quickstart's --parexec-trace SVG), committed with the docs.
html_static_path = ["_static"]
