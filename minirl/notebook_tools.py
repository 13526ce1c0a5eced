"""Execute lesson notebooks top to bottom in a fresh kernel, in place, and time them.

    python -m minirl.notebook_tools notebooks/01_bandits_reinforce.ipynb [more.ipynb ...]
    python -m minirl.notebook_tools --regenerate notebooks/03_tiny_lm.ipynb

This is how the committed outputs are produced (and how the README's runtimes are measured):
a fresh kernel, the notebook's own folder as the working directory, the hub switched off, one thread
unless OMP_NUM_THREADS says otherwise (the lessons compute in float64, so the outputs do not depend on
it, and the test command checks them at torch's default thread count as well), figures written into
`figures/` (`MINIRL_SAVE_FIGURES=1`). With `--regenerate` (`MINIRL_REGENERATE=1`) a
lesson that makes a shipped artefact (lessons 03, 05, 08) overwrites it in `data/`; without it the
artefact goes to `runs/` and the lesson compares it with the shipped one.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .paths import REGENERATE_ENV, SAVE_FIGURES_ENV


def execute(path, timeout: int = 3600, regenerate: bool = False) -> float:
    """Run the notebook at `path` in a fresh kernel, save it with its outputs; return seconds."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[SAVE_FIGURES_ENV] = "1"
    os.environ[REGENERATE_ENV] = "1" if regenerate else "0"
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    regenerate = "--regenerate" in args
    paths = [a for a in args if a != "--regenerate"]
    if not paths:
        print(__doc__)
        return 2
    for p in paths:
        print(f"{p}: {execute(p, regenerate=regenerate):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
