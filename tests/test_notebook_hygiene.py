"""What a learner sees when opening a lesson in JupyterLab (issue 16): the committed notebooks carry
the metadata JupyterLab writes (so opening and autosaving an unmodified lesson changes no file), code
that fits a cell at 1440 px with the file browser open, outputs committed, and solutions folded under
their own heading, printed lines that JupyterLab shows whole. `python -m minirl.notebook_tools --tidy`
fixes all but the hand-wrapping."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from minirl.notebook_tools import (
    _COLLAPSED,
    KERNELSPEC,
    MAX_CODE_LINE,
    MAX_OUTPUT_LINE,
    _is_solutions_heading,
    long_output_lines,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _read(path):
    return nbformat.read(path, as_version=4)


def test_there_are_lessons():
    assert len(NOTEBOOKS) >= 12


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_what_jupyterlab_writes(path):
    assert _read(path).metadata.get("kernelspec") == KERNELSPEC


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_lines_fit_the_cell(path):
    long = [
        (i, line)
        for i, c in enumerate(_read(path).cells)
        if c.cell_type == "code"
        for line in c.source.splitlines()
        if len(line) > MAX_CODE_LINE
    ]
    assert not long, f"{len(long)} code lines over {MAX_CODE_LINE} characters, first: cell {long[0][0]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_printed_lines_fit_the_output_area(path):
    # JupyterLab breaks a longer output line mid-word; lessons print on several short lines instead
    long = long_output_lines(_read(path))
    assert not long, (
        f"{len(long)} printed lines over {MAX_OUTPUT_LINE} characters, first: cell {long[0][0]}: "
        f"{long[0][1][:60]!r}..."
    )


def test_long_output_lines_reads_what_jupyterlab_shows():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(...)")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="short\n" + "x" * 101 + "\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "y" * 101}),
        nbformat.v4.new_output("display_data", data={"image/png": "", "text/plain": "z" * 300}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("w" * 300), cell]
    assert long_output_lines(nb) == [(1, "x" * 101), (1, "y" * 101)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_committed(path):
    # nbval passes a notebook without outputs vacuously
    code = [c for c in _read(path).cells if c.cell_type == "code" and c.source.strip()]
    assert code and all(c.execution_count is not None for c in code)


def _heading_level(cell):
    if cell.cell_type != "markdown":
        return None
    levels = [len(line) - len(line.lstrip("#")) for line in cell.source.splitlines() if line.startswith("#")]
    return min(levels) if levels else None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_are_folded_under_their_own_heading(path):
    cells = _read(path).cells
    has_exercises = any(
        c.cell_type == "markdown" and "## Exercises" in c.source for c in cells
    )
    heads = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and _is_solutions_heading(c.source)]
    if not has_exercises:
        assert not heads
        return
    assert len(heads) == 1, "one '## Solutions' heading cell"
    i = heads[0]
    assert cells[i].metadata.get(_COLLAPSED) is True, "the Solutions heading is folded"
    level = _heading_level(cells[i])
    later = [j for j in range(i + 1, len(cells)) if (_heading_level(cells[j]) or 99) <= level]
    assert not later, f"a heading at cell {later[0]} would end the folded section early"
    assert "Try each exercise" in cells[i - 1].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opening_states_prerequisites_and_runtime(path):
    opening = _read(path).cells[0].source
    assert opening.startswith("# Lesson"), "the first cell is the lesson's title"
    assert "**Prerequisites:**" in opening and "**Runtime:**" in opening
