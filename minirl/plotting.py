"""The house plotting style and `save_figure`, which writes lesson figures to `figures/` when the
committed outputs are produced and to `runs/figures/` otherwise."""
from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt
from PIL import Image

from .paths import FIGURES_DIR, RUNS_DIR, SAVE_FIGURES_ENV, _flag

DPI = 150  # saved PNGs: sharp on HiDPI screens, still small (figures are committed)
INLINE_DPI = 90  # what the notebook embeds: keeps the committed notebooks small

COLORS = {
    "policy": "#1f77b4",
    "reference": "#7f7f7f",
    "optimum": "#d62728",
    "baseline": "#2ca02c",
    "k1": "#1f77b4",
    "k2": "#ff7f0e",
    "k3": "#2ca02c",
}


def use_style() -> None:
    """Apply the course style: light grid, no top/right spines, text >= 9 pt, framed legends."""
    matplotlib.rcParams.update(
        {
            "figure.figsize": (6.4, 3.8),
            "figure.dpi": INLINE_DPI,
            "savefig.dpi": DPI,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "xtick.labelsize": 9,
            "ytick.labelsize": 9,
            # a framed, nearly opaque legend stays readable where "best" still has to touch data
            "legend.fontsize": 9,
            "legend.frameon": True,
            "legend.framealpha": 0.9,
            "legend.edgecolor": "0.8",
        }
    )


def save_figure(fig, name: str, dpi: int = DPI):
    """Save `fig` as `<name>.png` (tight bounding box, 150 dpi, 256-colour palette) and return the path.

    The folder is `figures/` (committed, shown in the README) when `MINIRL_SAVE_FIGURES=1`, which
    `python -m minirl.notebook_tools` sets while it produces the committed outputs; otherwise it is
    `runs/figures/` (git-ignored), so running a lesson or the tests never modifies a tracked file.
    Prints nothing, so the saving cell's checked output stays the same on every machine.
    """
    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"save_figure expects a bare name like '01_reinforce', got {name!r}")
    folder = FIGURES_DIR if _flag(SAVE_FIGURES_ENV) else RUNS_DIR / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    buffer.seek(0)
    # A line plot uses few colours: a 256-colour palette PNG looks the same and is about 4x smaller
    # (the committed figures/ went from 7.3 to 2.6 MB). No dithering, so flat areas stay flat.
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
        palette.save(path, format="PNG", optimize=True)
    return path
