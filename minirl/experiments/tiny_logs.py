"""The small run logs lesson 17 plots: every entry point at --preset tiny on a CPU.

    python -m minirl.experiments.tiny_logs                      # writes runs/results/17_*.jsonl
    MINIRL_REGENERATE=1 python -m minirl.experiments.tiny_logs  # re-makes the shipped data/results/

Files: 17_tiny_<task>_<method>.jsonl (the log.jsonl of the run: one row per step) and
17_tiny_eval.jsonl (one row per run: task, method, and its held-out evaluation). Lesson 17 re-runs
the first steps of one of them and checks that the numbers (not the times) are reproduced.
"""
from __future__ import annotations

import json
import shutil
import sys

from ..paths import RUNS_DIR, artifact_dir, relative
from . import common, gpt2_rlvr, gpt2_sentiment

STEPS, EVAL_PROMPTS = 10, 32
RUNS = [("sentiment", m) for m in common.METHODS_SENTIMENT] + [("rlvr", "grpo")]


def argv_for(task: str, method: str, out_dir, steps: int = STEPS) -> list[str]:
    """The command line of one shipped run (flags besides the preset's defaults)."""
    return ["--preset", "tiny", "--method", method, "--steps", str(steps), "--eval-prompts", str(EVAL_PROMPTS),
            "--checkpoint-every", "0", "--out-dir", str(out_dir), "--no-progress"]


def main(argv=None) -> list:
    dest = artifact_dir("results")
    dest.mkdir(parents=True, exist_ok=True)
    evals = []
    for task, method in RUNS:
        out = RUNS_DIR / "17" / f"tiny-logs-{task}-{method}"
        fn = gpt2_sentiment.main if task == "sentiment" else gpt2_rlvr.main
        res = fn(argv_for(task, method, out))
        shutil.copyfile(out / "log.jsonl", dest / f"17_tiny_{task}_{method}.jsonl")
        evals.append({"task": task, "method": method, **res["eval"]})
    path = dest / "17_tiny_eval.jsonl"
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in evals))
    print(f"wrote {len(RUNS)} logs and {path.name} to {relative(dest)}")
    return evals


if __name__ == "__main__":
    main(sys.argv[1:])
