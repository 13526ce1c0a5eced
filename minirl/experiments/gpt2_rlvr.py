"""RL with a verifiable reward: arithmetic problems, graded by the exact final answer, trained by
GRPO or RLOO (lesson 13's task, lesson 17's scripts).

    python -m minirl.experiments.gpt2_rlvr --preset tiny --method grpo          # CPU, seconds
    python -m minirl.experiments.gpt2_rlvr --preset gpt2 --method grpo          # GPT-2 124M, one GPU
    accelerate launch --num_processes 8 -m minirl.experiments.gpt2_rlvr --preset gpt2 --method rloo

Problems come from the tiny world's generator (`minirl.world.arithmetic_prompts`, "Q: 3+4=? "),
the reward is `minirl.rewards.exact_match_reward` (1 if the text ends in "A: <right answer>").
The tiny preset uses one-digit sums and the shipped SFT model, which knows the format; GPT-2 does
not know it, so on GPT-2 the reward starts near 0 (a format SFT first is the usual recipe).
Flags and the offline behaviour are those of `gpt2_sentiment`.
"""
from __future__ import annotations

import sys

from ..rewards import exact_match_reward
from ..rollout import text_scorer
from ..world import arithmetic_prompts
from . import gpt2_sentiment, methods

TASK = "rlvr"


def load_task(cfg, dist) -> methods.Task:
    """Unique arithmetic problems (one-digit sums on the tiny preset, levels 1-2 on gpt2): the
    first 64 to train on, the next cfg.eval_prompts held out."""
    policy, tok = gpt2_sentiment.load_policy_for(cfg, dist)
    levels = (1,) if cfg.preset == "tiny" else (1, 2)
    problems = list({p["prompt"]: p for p in arithmetic_prompts(2000, seed=1, levels=levels)}.values())
    answers = {p["prompt"]: p["answer"] for p in problems}
    train = [p["prompt"] for p in problems[:64]]
    held = [p["prompt"] for p in problems[64:64 + max(cfg.eval_prompts, 2)]]
    score = text_scorer(lambda prompt, response: exact_match_reward(response, answers[prompt]))
    return methods.Task(TASK, train, held, score, tok, policy)


def main(argv=None) -> dict:
    return gpt2_sentiment.main(argv, task=TASK, loader=load_task)


if __name__ == "__main__":
    main(sys.argv[1:])
