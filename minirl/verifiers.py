"""Verifiers for RL with verifiable rewards: a step checker, sum / min / mean aggregation over steps,
and one reward function per verifier under one contract (derived in notebooks/14_rlvr.ipynb).

The task is the world's worked arithmetic (`minirl.world.arithmetic_problems`):

    prompt   "Q: 3*7+17=?"
    response " 3*7=21. 21+17=38. A: 38"       steps "lhs=value." then "A: answer"

THE REWARD CONTRACT (every verifier below):

    fn(prompt: str, response: str) -> float

  * The gold answer is computed from the prompt ("Q: <expr>=?"), so no answer table travels
    with the samples; wrap any verifier with `minirl.rlhf.text_scorer` to get the
    `score_fn(samples) -> (B,)` that `minirl.algos.grpo.train_grpo` takes (`scorer(name)`).
  * ANY response string gets a defined, finite reward: an empty response, no "A:", garbage,
    negative or huge numbers (more than MAX_DIGITS digits are never converted to int: Python
    refuses to convert more than 4300 digits, and a product of two long numbers costs time)
    score 0 (or the documented value), never an exception in the middle of a run.
  * A prompt that is not an arithmetic question, a non-str prompt or response, or an unknown
    verifier name is a programming error and raises ValueError saying what was expected.

    verifier        value                           needs the gold?  what it checks
    "outcome"       1 if the final "A: n" is the    yes              the answer only (the strict
                    gold answer, else 0                              verifier, the gold of lesson 14)
    "format"        1 if the response is steps      no               the shape only
                    "lhs=value." then "A: n"
    "process_min"   min over steps of step_ok       no               every step true (a PRM)
    "process_mean"  mean over steps of step_ok      no               the share of true steps
    "process_sum"   sum over steps of step_ok       no               the number of true steps
                    (in 0..MAX_STEPS)
    "loose"         1 if the gold answer appears    yes              a LOOSE outcome check:
                    anywhere as a number                             hackable on purpose

The step checker (`check_steps`) reads each written step "lhs=value" and marks it correct when
the expression is true; the final "A: n" counts as one more step, correct when n equals the value
of the last written step (the answer follows from the work). A response with no written step has
only its answer step, which cannot follow from anything and counts as wrong. The checker never
looks at the question: a TRUE step is not necessarily a USEFUL one (" 3*7=21. A: 21" to
"Q: 3*7+17=?" has every step right and the wrong answer). That is the hole lesson 14 watches RL
find.

Tensor form (for learned, soft step scores as well): `aggregate_steps(step_scores, step_mask,
reduce)` with step_scores (B, S) in [0, 1], step_mask (B, S) -> (B,), min / sum / mean over the
steps that count, 0 for a row without steps.

The task model: `train_arith_model` continues SFT of the shipped tiny-sft model on worked
arithmetic only, to a model at the edge of its competence on the harder levels (lesson 14's
data/tiny-arith, reproduced by tests/test_verifiers.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .checks import as_float_mask, check_tensor

MAX_DIGITS = 18
"""numbers with more digits than this are not converted: a step with one is wrong, an answer with
one matches nothing (no answer of the world has more than 3 digits)"""
MAX_STEPS = 16
"""at most this many written steps are read (process_sum is at most MAX_STEPS + 1)"""

_PROMPT_RE = re.compile(r"^Q: ([0-9]+(?:[+\-*][0-9]+)*)=\?$")
_STEP_RE = re.compile(r"([0-9]+(?:[+\-*][0-9]+)+)=(-?[0-9]+)")
_ANSWER_RE = re.compile(r"A:\s*(-?[0-9]+)\s*$")
_FORMAT_RE = re.compile(r"^\s*(?:[0-9]+(?:[+\-*][0-9]+)+=-?[0-9]+\.\s+)*A: (-?[0-9]+)\s*$")
_NUMBER_RE = re.compile(r"-?[0-9]+")


def _check_str(x, name):
    if not isinstance(x, str):
        raise ValueError(f"{name} must be a str, got {type(x).__name__}")


def _to_int(digits: str):
    """int of a signed digit string, or None when it has more than MAX_DIGITS digits."""
    if len(digits.lstrip("-").lstrip("0")) > MAX_DIGITS:
        return None
    return int(digits)


def _eval(expr: str):
    """Value of integers joined by + - * (usual precedence), or None if a number is too long."""
    total = 0
    for op, term in re.findall(r"([+\-]?)([0-9*]+)", expr):
        prod = 1
        for f in term.split("*"):
            v = _to_int(f)
            if v is None:
                return None
            prod *= v
        total += -prod if op == "-" else prod
    return total


def gold_answer(prompt: str) -> int:
    """The exact answer of a world question "Q: <expr>=?" (ValueError for any other prompt)."""
    _check_str(prompt, "prompt")
    m = _PROMPT_RE.match(prompt.strip())
    value = _eval(m.group(1)) if m else None
    if value is None:
        raise ValueError(f"prompt must be an arithmetic question like 'Q: 3*7+17=?', got {prompt!r}")
    return value


def final_answer(response: str):
    """The integer after the final "A:" at the END of the response, or None (no answer, or more
    than MAX_DIGITS digits). Same rule as `minirl.rewards.parse_answer`, without its crash on
    numbers Python will not convert."""
    _check_str(response, "response")
    m = _ANSWER_RE.search(response)
    return _to_int(m.group(1)) if m else None


@dataclass(frozen=True)
class Step:
    """One checked step: the text as written, the value claimed, the true value (None when it
    cannot be computed), and whether the step is correct."""

    text: str
    claimed: int | None
    true: int | None
    correct: bool


def check_steps(response: str) -> list[Step]:
    """Per-step correctness of a response: each written "lhs=value" (at most MAX_STEPS), then
    the answer step "A: n", correct when n equals the last written step's value. No "A:" at the
    end: no answer step. Never raises on a str (see the module docstring)."""
    _check_str(response, "response")
    steps = []
    for lhs, val in _STEP_RE.findall(response)[:MAX_STEPS]:
        claimed, true = _to_int(val), _eval(lhs)
        steps.append(Step(f"{lhs}={val}", claimed, true, claimed is not None and claimed == true))
    m = _ANSWER_RE.search(response)
    if m:
        claimed = _to_int(m.group(1))
        last = steps[-1].claimed if steps else None
        steps.append(Step(f"A: {m.group(1)}", claimed, last, claimed is not None and claimed == last))
    return steps


AGGREGATIONS = ("min", "sum", "mean")


def aggregate_steps(step_scores: torch.Tensor, step_mask: torch.Tensor, reduce: str = "min") -> torch.Tensor:
    """Process reward of each row from its step scores.

    step_scores (B, S) floats (0/1 from a checker, or a learned PRM's probabilities), step_mask
    (B, S) bool or 0/1 (1 on the steps that exist; rows padded on the right or anywhere).
    reduce "min" (every step must be right: the weakest step), "sum" (the number of right
    steps: grows with the number of steps written) or "mean" (the share of right steps).
    Returns (B,) in step_scores' dtype; a row with no step scores 0 for every reduce.
    Differentiable in step_scores (min: the gradient goes to the smallest step)."""
    check_tensor(step_scores, "step_scores", ndim=2, floating=True)
    m = as_float_mask(step_mask, step_scores, "step_mask")
    if reduce not in AGGREGATIONS:
        raise ValueError(f"reduce must be one of {AGGREGATIONS}, got {reduce!r}")
    n = m.sum(-1)
    if reduce == "sum":
        return (step_scores * m).sum(-1)
    if reduce == "mean":
        return (step_scores * m).sum(-1) / n.clamp(min=1)
    big = torch.finfo(step_scores.dtype).max
    low = torch.where(m > 0, step_scores, torch.full_like(step_scores, big)).min(-1).values
    return torch.where(n > 0, low, torch.zeros_like(low))


def step_table(responses) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked steps of a batch of responses -> (step_correct (B, S), step_mask (B, S)) in the
    default dtype, S the most steps in the batch (at least 1), padded on the right."""
    if isinstance(responses, str) or not isinstance(responses, (list, tuple)):
        raise ValueError(f"responses must be a list of str, got {type(responses).__name__}")
    checked = [check_steps(r) for r in responses]
    S = max([len(c) for c in checked] + [1])
    ok = torch.zeros(len(checked), S)
    mask = torch.zeros(len(checked), S)
    for i, c in enumerate(checked):
        for j, st in enumerate(c):
            ok[i, j], mask[i, j] = float(st.correct), 1.0
    return ok, mask


# ---------------------------------------------------------------- the verifiers (one contract)
def outcome_reward(prompt: str, response: str) -> float:
    """STRICT outcome verifier: 1.0 if the final "A: n" equals the gold answer, else 0.0."""
    gold = gold_answer(prompt)
    return float(final_answer(response) == gold)


def format_reward(prompt: str, response: str) -> float:
    """1.0 if the response is zero or more steps "lhs=value." then "A: n", else 0.0 (the prompt is
    only checked to be a question). Says nothing about correctness."""
    gold_answer(prompt)
    _check_str(response, "response")
    return float(_FORMAT_RE.match(response) is not None)


def process_reward(prompt: str, response: str, reduce: str = "min") -> float:
    """Step-checker (PRM-style) reward, `aggregate_steps` of `check_steps` by `reduce`. Does not
    use the gold answer: it rewards true steps, useful or not."""
    gold_answer(prompt)
    ok, mask = step_table([response])
    return float(aggregate_steps(ok, mask, reduce)[0])


def loose_reward(prompt: str, response: str) -> float:
    """LOOSE outcome verifier: 1.0 if the gold answer appears ANYWHERE in the response as a whole
    number (in a step, after "A:", or in a list of guesses), else 0.0. Hackable on purpose."""
    gold = str(gold_answer(prompt))
    _check_str(response, "response")
    return float(any(s == gold for s in _NUMBER_RE.findall(response) if len(s) <= MAX_DIGITS + 1))


VERIFIERS = {
    "outcome": outcome_reward,
    "format": format_reward,
    "process_min": lambda p, r: process_reward(p, r, "min"),
    "process_mean": lambda p, r: process_reward(p, r, "mean"),
    "process_sum": lambda p, r: process_reward(p, r, "sum"),
    "loose": loose_reward,
}


def verify(name: str, prompts, responses) -> torch.Tensor:
    """Verifier `name` on a batch -> (B,) in the default dtype."""
    if name not in VERIFIERS:
        raise ValueError(f"verifier must be one of {sorted(VERIFIERS)}, got {name!r}")
    for x, what in ((prompts, "prompts"), (responses, "responses")):
        if isinstance(x, str) or not isinstance(x, (list, tuple)):
            raise ValueError(f"{what} must be a list of str, got {type(x).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have equal lengths, got {len(prompts)} and {len(responses)}")
    fn = VERIFIERS[name]
    return torch.tensor([fn(p, r) for p, r in zip(prompts, responses)], dtype=torch.get_default_dtype())


def scorer(name: str):
    """Verifier `name` as a `score_fn(samples) -> (B,)` for `minirl.algos.grpo.train_grpo`."""
    if name not in VERIFIERS:
        raise ValueError(f"verifier must be one of {sorted(VERIFIERS)}, got {name!r}")
    from .rollout import text_scorer

    return text_scorer(VERIFIERS[name])


# ---------------------------------------------------------------- the task model
ARITH_RECIPE = dict(n_steps=400, batch_size=64, lr=2e-3, data_seed=11, levels=(1, 1, 2, 3, 4, 5))
"""data/tiny-arith: tiny-sft, then SFT on worked arithmetic only (level 1 twice as often)"""
ARITH_SAMPLE_PROMPTS = ["Q: 7+2=?", "Q: 23+45=?", "Q: 8*7=?", "Q: 34+12-5=?", "Q: 6*7+5=?", "Q: 9*3+14=?"]


def train_arith_model(policy, tokenizer, n_steps: int = 400, batch_size: int = 64, lr: float = 2e-3,
                      data_seed: int = 11, levels=(1, 1, 2, 3, 4, 5), max_steps: int | None = None,
                      callback=None) -> list[float]:
    """Continue SFT of `policy` (in place) on `n_steps` batches of fresh worked problems
    (`world.arithmetic_problems(n_steps * batch_size, data_seed, levels)`, in order), AdamW
    (betas 0.9, 0.95, weight decay 0.01) at a constant `lr`, gradient norm clipped at 1, loss on
    the response tokens (`minirl.losses.sft_loss`): `minirl.algos.sft.train_sft` with no warmup or
    decay. Deterministic (no dropout, no sampling). max_steps stops after that many of the
    n_steps steps (the same first steps: the learning rate is constant); callback(state, row) runs
    after every step (train_sft's).
    Returns the loss of every step run; leaves the policy in eval mode."""
    from . import world
    from .algos import sft
    from .tokenizer import encode_prompt_response

    if not isinstance(n_steps, int) or n_steps < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"n_steps and batch_size must be ints >= 1, got {n_steps!r}, {batch_size!r}")
    data = world.arithmetic_problems(n_steps * batch_size, seed=data_seed, levels=levels)
    batches = [encode_prompt_response(tokenizer, [d["prompt"] for d in chunk], [d["response"] for d in chunk])
               for chunk in (data[i * batch_size:(i + 1) * batch_size] for i in range(n_steps))]
    # lesson 03's loop (minirl.algos.sft) at a constant lr: warmup 1 step, no decay
    cfg = sft.SFTConfig(lr=lr, warmup=1, min_lr_ratio=1.0)
    history = sft.train_sft(sft.init_sft(policy, cfg, n_steps), batches, cfg, max_steps=max_steps,
                            callback=callback)
    return [row["loss"] for row in history]


ARITH_LOG = "tiny_arith_training_log.json"
"""data/results/<ARITH_LOG>: the losses of one full run of ARITH_RECIPE from data/tiny-sft at one
thread, the weights' fingerprint after its first ARITH_CHECK_STEPS steps, and how far its final
weights are from the shipped data/tiny-arith (`record_arith_run`). The test re-runs those first
steps and compares (the full recipe takes about 3 minutes at one thread)."""
ARITH_CHECK_STEPS = 100


def record_arith_run(path=None) -> dict:
    """Run ARITH_RECIPE in full from data/tiny-sft in float64 at one thread, as the shipped
    data/tiny-arith was made, and write its record (see ARITH_LOG) to `path` (default
    data/results/ARITH_LOG). Returns the record. `python -m minirl.verifiers --record-arith-run`."""
    import json

    from .models import TINY_SFT_DIR, load_policy
    from .paths import DATA_DIR
    from .utils import weights_fingerprint

    before_dtype, before_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        policy, tok = load_policy(TINY_SFT_DIR)
        fp = {}

        def at_check(state, row):
            if state.step == ARITH_CHECK_STEPS:
                fp["fingerprint"] = weights_fingerprint(state.model)

        losses = train_arith_model(policy, tok, **ARITH_RECIPE, callback=at_check)
        shipped, _ = load_policy(DATA_DIR / "tiny-arith")
        diff = max((a - b).abs().max().item() for a, b in zip(policy.parameters(), shipped.parameters()))
    finally:
        torch.set_default_dtype(before_dtype)
        torch.set_num_threads(before_threads)
    record = {"recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in ARITH_RECIPE.items()},
              "threads": 1, "check_step": ARITH_CHECK_STEPS, "fingerprint": fp["fingerprint"], "loss": losses,
              "final_max_abs_diff_vs_shipped": diff}
    out = DATA_DIR / "results" / ARITH_LOG if path is None else path
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def arith_samples(policy, tokenizer, prompts=None, max_new_tokens: int = 24) -> list[dict]:
    """Greedy decodes {"prompt", "response"} of `prompts` (default ARITH_SAMPLE_PROMPTS): what
    data/tiny-arith/samples.json records and a test reproduces."""
    from .rollout import sample

    prompts = list(ARITH_SAMPLE_PROMPTS if prompts is None else prompts)
    s = sample(policy, tokenizer, prompts, max_new_tokens, 0.0, torch.Generator().manual_seed(0))
    return [{"prompt": p, "response": r} for p, r in zip(prompts, s.responses)]


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--record-arith-run"]:
        raise SystemExit("usage: python -m minirl.verifiers --record-arith-run")
    rec = record_arith_run()
    print(f"recorded {len(rec['loss'])} steps; final weights vs data/tiny-arith: "
          f"largest difference {rec['final_max_abs_diff_vs_shipped']:.1e}")

