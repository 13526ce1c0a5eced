"""Repo-relative paths, independent of the working directory of the kernel or the shell.

A Jupyter kernel starts in the notebook's folder, pytest in the repo root, a script wherever it
was launched. Every lesson resolves files through these constants instead of relative strings.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
FIGURES_DIR = REPO_ROOT / "figures"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUNS_DIR = REPO_ROOT / "runs"  # logs, checkpoints, re-made artefacts and figures (git-ignored)
RESULTS_DIR = DATA_DIR / "results"  # shipped results one lesson hands to later ones (small JSON)

REGENERATE_ENV = "MINIRL_REGENERATE"  # =1: lessons overwrite the shipped artefacts in data/
SAVE_FIGURES_ENV = "MINIRL_SAVE_FIGURES"  # =1: save_figure writes into figures/ (committed)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def regenerating() -> bool:
    """True when the shipped artefacts are being re-made (`MINIRL_REGENERATE=1`, set by
    `python -m minirl.notebook_tools --regenerate`)."""
    return _flag(REGENERATE_ENV)


def artifact_dir(name: str) -> Path:
    """Where a lesson writes an artefact it makes (a checkpoint, preference pairs, a results file).

    By default `runs/<name>`: running a lesson, or the test suite, never changes a tracked file, and
    the lesson then compares what it made with the shipped `data/<name>`. With `MINIRL_REGENERATE=1`
    it is `data/<name>` itself, which is how the shipped copy is re-made on purpose.
    """
    if not name or name.startswith(("/", ".")):
        raise ValueError(f"artifact_dir expects a relative name like 'tiny-sft', got {name!r}")
    return (DATA_DIR if regenerating() else RUNS_DIR) / name


def relative(path) -> str:
    """`path` relative to the repo root, for printing (never print machine-specific paths)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)
