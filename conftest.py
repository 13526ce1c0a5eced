"""Repository-wide pytest hooks (unit tests and `pytest --nbval notebooks`).

1. Tests never modify tracked files. The `git status` of the checkout is read when the session
   starts and again when it ends; a file that became modified, deleted or untracked-and-not-ignored
   during the run fails the session with a list of the files. (Lessons write what they make to
   `runs/`, which is git-ignored; see `minirl.paths.artifact_dir` and `minirl.plotting.save_figure`.)
2. Runtimes. The seconds spent in each notebook's cells (and in the unit tests) are summed and
   written to `runs/test_timings.json`; the README's runtime table is read from that file.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_state = {"status": None, "durations": defaultdict(float), "t0": None}


def _git_status():
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.stdout.splitlines()) if out.returncode == 0 else None


def pytest_sessionstart(session):
    _state["status"] = _git_status()
    _state["t0"] = time.perf_counter()


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    key = path if path.endswith(".ipynb") else "tests/"
    _state["durations"][key] += report.duration


def pytest_sessionfinish(session, exitstatus):
    runs = ROOT / "runs"
    runs.mkdir(exist_ok=True)
    timings = {k: round(v, 1) for k, v in sorted(_state["durations"].items())}
    record = {"threads": os.environ.get("OMP_NUM_THREADS", "default"),
              "wall_seconds": round(time.perf_counter() - _state["t0"], 1), "seconds": timings}
    (runs / "test_timings.json").write_text(json.dumps(record, indent=1) + "\n")
    before, after = _state["status"], _git_status()
    if before is None or after is None:
        return
    changed = sorted(after - before)
    if changed:
        session.exitstatus = 1
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = ("tests modified tracked files (they must write to runs/ instead):\n  "
               + "\n  ".join(changed))
        if tr is not None:
            tr.write_line(msg, red=True)
        else:
            print(msg)
