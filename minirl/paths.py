"""Repo-relative paths, independent of the working directory of the kernel or the shell.

A Jupyter kernel starts in the notebook's folder, pytest in the repo root, a script wherever it
was launched. Every lesson resolves files through these constants instead of relative strings.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
FIGURES_DIR = REPO_ROOT / "figures"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUNS_DIR = REPO_ROOT / "runs"  # logs and checkpoints of long runs (git-ignored)


def relative(path) -> str:
    """`path` relative to the repo root, for printing (never print machine-specific paths)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)
