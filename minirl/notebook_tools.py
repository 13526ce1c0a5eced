"""Execute lesson notebooks top to bottom in a fresh kernel, in place, and time them.

    python -m minirl.notebook_tools notebooks/01_bandits_reinforce.ipynb [more.ipynb ...]
    python -m minirl.notebook_tools --regenerate notebooks/03_tiny_lm.ipynb
    python -m minirl.notebook_tools --tidy notebooks/*.ipynb   # no execution: see tidy()

This is how the committed outputs are produced (and how the README's runtimes are measured):
a fresh kernel, the notebook's own folder as the working directory, the hub switched off, one thread
unless OMP_NUM_THREADS says otherwise (the lessons compute in float64, so the outputs do not depend on
it, and the test command checks them at torch's default thread count as well; lessons 08, 11 and 12,
over 3 minutes at one thread, are produced with OMP_NUM_THREADS=2), figures written into
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
    tidy_metadata(nb)
    nbformat.write(nb, path)
    return seconds


def tidy(path) -> list[str]:
    """Apply the tidy steps to the notebook at `path` without executing it; return long lines left."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    left = tidy_code(nb)
    fold_solutions(nb)
    tidy_metadata(nb)
    nbformat.write(nb, path)
    return left


def main(argv=None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    regenerate = "--regenerate" in args
    paths = [a for a in args if a not in ("--regenerate", "--tidy")]
    if not paths:
        print(__doc__)
        return 2
    if "--tidy" in args:
        for p in paths:
            for line in tidy(p):
                print(f"{p}: still longer than {MAX_CODE_LINE} characters: {line.strip()[:80]}")
        return 0
    for p in paths:
        print(f"{p}: {execute(p, regenerate=regenerate):.1f} s", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Tidy: what a learner sees in JupyterLab (metadata that JupyterLab would rewrite, collapsed
# solutions, code that fits the cell). `python -m minirl.notebook_tools --tidy NB ...` applies it
# without executing; `execute` applies the metadata part to every notebook it writes.

#: The kernelspec JupyterLab writes when it opens a lesson; committing it keeps `git status` clean
#: after a learner opens a lesson and JupyterLab autosaves it.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
#: Longest code line a cell shows at 1440 px with the file browser open, with some margin.
MAX_CODE_LINE = 100
#: Longest printed output line. JupyterLab breaks stream output anywhere (`word-break: break-all`);
#: its output area holds 127 characters at 1440 px and 107 at 1280 px with the file browser open
#: (measured in Chromium), so 100 keeps every printed line whole on a laptop screen.
MAX_OUTPUT_LINE = 100
_WIDGET = "application/vnd.jupyter.widget-view+json"


def output_text(output) -> str:
    """The text JupyterLab shows for one cell output ('' for images, HTML and widgets)."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    data = output.get("data", {})
    if any(k in data for k in ("image/png", "text/html", "text/markdown", "text/latex", _WIDGET)):
        return ""
    return data.get("text/plain", "")


def long_output_lines(nb, limit: int = MAX_OUTPUT_LINE) -> list[tuple[int, str]]:
    """(cell index, line) for every printed output line longer than `limit` characters."""
    return [
        (i, line)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        for line in output_text(out).splitlines()
        if len(line) > limit
    ]
_COLLAPSED = "jp-MarkdownHeadingCollapsed"


def _is_solutions_heading(source: str) -> bool:
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    return first.startswith("#") and "solution" in first.lower()


def tidy_metadata(nb) -> None:
    """Set the kernelspec JupyterLab writes, drop stored widget state, fold "Solutions" headings (in place)."""
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    # nbclient stores the widgets' state; JupyterLab does not (by default) and would drop it on save
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and _is_solutions_heading(cell.source):
            cell.metadata[_COLLAPSED] = True


def _split_points(body: str, is_f: bool) -> list[int]:
    """Indices in a string literal's body after which it may be cut: after a space, outside {}."""
    points, depth, i = [], 0, 0
    while i < len(body):
        ch = body[i]
        if is_f and ch in "{}" and body[i : i + 2] in ("{{", "}}"):
            i += 2
            continue
        if is_f and ch == "{":
            depth += 1
        elif is_f and ch == "}":
            depth -= 1
        elif ch == " " and depth == 0 and (i == 0 or body[i - 1] != "\\"):
            points.append(i + 1)
        i += 1
    return points


def _wrap_string_token(tok: str, col: int, limit: int) -> list[str] | None:
    """Cut one single-line string literal into adjacent literals that each end before `limit`."""
    import re

    m = re.match(r"^([rRbBfFuU]{0,2})('|\")(.*)\2$", tok, re.S)
    if not m or "\n" in tok:
        return None
    prefix, quote, body = m.groups()
    if tok[len(prefix) :].startswith(quote * 3):
        return None
    is_f = "f" in prefix.lower()
    pieces, rest = [], body
    overhead = len(prefix) + 2
    while col + overhead + len(rest) > limit - 1:
        room = limit - 1 - col - overhead
        cuts = [p for p in _split_points(rest, is_f) if 0 < p <= room and p < len(rest)]
        if not cuts:
            break
        pieces.append(rest[: cuts[-1]])
        rest = rest[cuts[-1] :]
    if not pieces:
        return None
    pieces.append(rest)
    return [f"{prefix}{quote}{p}{quote}" for p in pieces]


def wrap_long_strings(source: str, limit: int = MAX_CODE_LINE) -> str:
    """Cut string literals on over-long lines into implicitly concatenated pieces (same AST)."""
    import io
    import tokenize

    lines = source.splitlines(keepends=True)
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return source
    depth, edits = 0, []
    for t in toks:
        if t.type == tokenize.OP and t.string in "([{":
            depth += 1
        elif t.type == tokenize.OP and t.string in ")]}":
            depth -= 1
        elif t.type == tokenize.STRING and t.start[0] == t.end[0]:
            row, col = t.start
            if len(lines[row - 1].rstrip("\n")) <= limit:
                continue
            inner = col + (1 if depth == 0 else 0)
            parts = _wrap_string_token(t.string, inner, limit)
            if parts:
                joined = ("\n" + " " * inner).join(parts)
                edits.append((row, col, t.end[1], f"({joined})" if depth == 0 else joined))
    for row, c0, c1, new in reversed(edits):
        line = lines[row - 1]
        lines[row - 1] = line[:c0] + new + line[c1:]
    return "".join(lines)


def _same_code(a: str, b: str) -> bool:
    import ast

    try:
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except SyntaxError:
        return False


def wrap_comments_and_docstrings(source: str, limit: int = MAX_CODE_LINE) -> str:
    """Re-wrap over-long full-line comments and one-line docstrings; move a long inline comment
    onto its own line(s) above its code. The code itself is unchanged (checked by the caller)."""
    import re
    import textwrap

    out = []
    for line in source.splitlines():
        if len(line) <= limit:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        stripped = line.strip()
        m_doc = re.fullmatch(r'"""(.*)"""', stripped)
        if stripped.startswith("#") and not stripped.startswith("# NBVAL"):
            text = stripped.lstrip("#").strip()
            out += [indent + "# " + t for t in textwrap.wrap(text, limit - len(indent) - 2)]
        elif m_doc and "\\" not in stripped:
            body = textwrap.wrap(m_doc.group(1), limit - len(indent) - 6)
            body[0] = '"""' + body[0]
            body[-1] = body[-1] + '"""'
            out += [indent + t for t in body]
        elif "  # " in line and "'" not in line.split("  # ", 1)[1] and '"' not in line.split("  # ", 1)[1]:
            code, comment = line.split("  # ", 1)
            out += [indent + "# " + t for t in textwrap.wrap(comment.strip(), limit - len(indent) - 2)]
            out.append(code.rstrip())
        else:
            out.append(line)
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _same_code_but_docstrings(a: str, b: str) -> bool:
    import ast

    def strip(tree):
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                body[0].value.value = " ".join(body[0].value.value.split())
        return ast.dump(tree)

    try:
        return strip(ast.parse(a)) == strip(ast.parse(b))
    except SyntaxError:
        return False


def tidy_code(nb, limit: int = MAX_CODE_LINE) -> list[str]:
    """Wrap over-long string literals in code cells (checked: the code's AST is unchanged).

    Run a formatter first (`ruff format --line-length 100`) for code; this handles what a formatter
    leaves alone. Returns the lines that are still too long, for a person to wrap.
    """
    left = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        new = cell.source
        for _ in range(3):  # a cut can leave a piece that a second pass splits again
            new2 = wrap_long_strings(new, limit)
            if new2 == new:
                break
            new = new2
        if new != cell.source and _same_code(cell.source, new):
            cell.source = new
        wrapped = wrap_comments_and_docstrings(cell.source, limit)
        if wrapped != cell.source and _same_code_but_docstrings(cell.source, wrapped):
            cell.source = wrapped
        left += [line for line in cell.source.splitlines() if len(line) > limit]
    return left


TRY_FIRST = (
    "*Try each exercise before you look: the solutions are folded under the next heading "
    "(click the arrow to its left to open them).*"
)


def fold_solutions(nb) -> bool:
    """Give the solutions their own "## Solutions" heading cell, folded, with a "try first" note.

    Splits a markdown cell that holds both the exercises and the "## Solutions" heading, or inserts
    the heading right after the exercises cell when the solutions follow without one. Idempotent;
    returns whether the notebook has an exercises section.
    """
    import nbformat

    cells = nb.cells
    ex = next(
        (
            i
            for i, c in enumerate(cells)
            if c.cell_type == "markdown"
            and any(line.strip().lower().startswith("## exercises") for line in c.source.splitlines())
        ),
        None,
    )
    if ex is None:
        return False
    src = cells[ex].source.splitlines()
    sol_line = next(
        (k for k, line in enumerate(src) if line.strip().lower().startswith("## solutions")), None
    )
    if sol_line is not None and sol_line > 0:  # split the cell at the heading
        cells[ex].source = "\n".join(src[:sol_line]).rstrip()
        cells.insert(ex + 1, nbformat.v4.new_markdown_cell("\n".join(src[sol_line:]).strip()))
    elif sol_line is None and not (
        ex + 1 < len(cells)
        and _is_solutions_heading(cells[ex + 1].source)
        and cells[ex + 1].cell_type == "markdown"
    ):
        cells.insert(ex + 1, nbformat.v4.new_markdown_cell("## Solutions"))
    if TRY_FIRST not in cells[ex].source:
        cells[ex].source = cells[ex].source.rstrip() + "\n\n" + TRY_FIRST
    # nbformat >= 4.5 wants ids on new cells
    for c in cells:
        if "id" not in c:
            import uuid

            c["id"] = uuid.uuid4().hex[:8]
    tidy_metadata(nb)
    return True


if __name__ == "__main__":
    raise SystemExit(main())
