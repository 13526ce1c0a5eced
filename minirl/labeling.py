"""Labeling: turn K responses per prompt into preference pairs with ANY scorer, by rank-and-pair.

A labeler scores every response of a prompt, ranks the prompt's responses (optionally with
Plackett-Luce noise), and splits the ranking into its C(K, 2) pairs (`losses.ranking_to_pairs`).
The gold labeler of lesson 05, a reward model (lesson 12's online DPO), a verifier or an AI judge
are the same function with another scorer:

    noisy_ranking(scores, temperature)               (N, K) scores -> (N, K) ranking, best first
    preference_pairs(prompts, responses, gold_fn)    lesson 05's simulated gold labeler (K fixed)
    label_pairs(prompts, responses, scorer, ...)     rank-and-pair with a batched scorer; any K per
                                                     prompt (prompts with < 2 responses skipped)
    save_pairs(rows, path), load_pairs(path)         the JSONL layout TRL's DPOTrainer reads

A PAIRWISE judge (an LLM judge asked "which is better, A or B?") answers in text, so its labels
take one more step (derived in notebooks/15, re-exported by `minirl.judges` under these names):

    parse_verdict(text)                              raw answer -> one of VERDICTS ("first",
                                                     "second", "tie", "refusal", "unparsable")
    judge_verdicts(judge, prompts, firsts, seconds)  call judge(prompts, firsts, seconds) -> raw
                                                     answers, parse them
    labels_from_verdicts(prompts, firsts, seconds, verdicts, swapped_verdicts=None)
                                                     rows, with ties, refusals, unparsable and
                                                     (both orders) inconsistent answers dropped
                                                     and COUNTED in a Counter
    judge_label_pairs(judge, prompts, firsts, seconds, both_orders=False)
                                                     the two above in one call (judges.label_pairs)

Derived in notebooks/05 (the simulated labeler) and used by notebooks/12 (an RM labeler) and
notebooks/15 (an AI judge). Moved out of `minirl.reward_model`, which re-exports every name.

Label noise (the simulated labeler): a labeler ranks the K responses of a prompt by the score plus
Gumbel noise, `sort(score / temperature + Gumbel(0, 1))` (a Plackett-Luce ranking). Since the
difference of two independent Gumbels is logistic, each pair of that ranking is ordered with
probability exactly sigma((s_i - s_j) / temperature): the labeler follows Bradley-Terry with the
score as its reward. temperature = 0 is a noiseless labeler. `flip_rate` adds independent flips of
each pair on top (a careless labeler). Pairs whose two scores tie are dropped by default: the
labeler prefers neither, so their label is a coin toss that teaches nothing.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Callable

import torch

from .checks import check_tensor
from .losses import ranking_to_pairs
from .world import gold_sentiment, write_jsonl

__all__ = [
    "gold_response_sentiment",
    "noisy_ranking",
    "preference_pairs",
    "label_pairs",
    "save_pairs",
    "load_pairs",
    "VERDICTS",
    "parse_verdict",
    "judge_verdicts",
    "labels_from_verdicts",
    "judge_label_pairs",
]

VERDICTS = ("first", "second", "tie", "refusal", "unparsable")


def gold_response_sentiment(prompt: str, response: str) -> float:
    """The default gold reward: `world.gold_sentiment` of the response alone (the prompt is an
    instruction such as "write a review of the soup:", which carries no sentiment)."""
    return gold_sentiment(response)


def _check_prompts(prompts):
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of str, got {type(prompts).__name__}")
    if not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("every prompt must be a non-empty str")


def noisy_ranking(scores: torch.Tensor, temperature: float = 0.0, generator=None) -> torch.Tensor:
    """Rank K items per row by `scores` (N, K), best first, as a Bradley-Terry labeler would.

    temperature 0: sort by score (ties keep index order). temperature > 0: sort by
    scores / temperature + Gumbel(0, 1) noise (Plackett-Luce); every pair (i, j) then comes out
    with i ahead of j with probability sigma((s_i - s_j) / temperature). Returns (N, K) int64.
    """
    check_tensor(scores, "scores", ndim=2, floating=True)
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if scores.shape[1] < 2:
        raise ValueError(f"a ranking needs K >= 2 items per row, got shape {tuple(scores.shape)}")
    keys = scores
    if temperature > 0:
        u = torch.rand(scores.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        keys = scores.double() / temperature - torch.log(-torch.log(u))  # + Gumbel(0, 1)
    return torch.sort(keys, dim=1, descending=True, stable=True).indices


def preference_pairs(prompts, responses, gold_fn: Callable[[str, str], float] = gold_response_sentiment,
                     temperature: float = 0.0, flip_rate: float = 0.0, drop_ties: bool = True,
                     generator=None) -> list[dict]:
    """Turn K responses per prompt into preference pairs labeled by a (noisy) gold labeler.

    prompts: N strings; responses: N lists of K strings (K >= 2, the same K for every prompt).
    Each prompt's K responses are scored by gold_fn(prompt, response), ranked by `noisy_ranking`
    (Bradley-Terry labeler with `temperature`), split into C(K, 2) pairs by `ranking_to_pairs`,
    then each pair is flipped independently with probability `flip_rate`. With `drop_ties`, pairs
    whose two gold scores are equal (identical responses, or no sentiment words in either) are dropped.

    Returns rows {"prompt", "chosen", "rejected", "gold_chosen", "gold_rejected", "prompt_index"}:
    the DPO layout (extra keys are ignored there). `gold_chosen > gold_rejected` says whether the
    label agrees with the gold; real RLHF data has no such column.
    """
    _check_prompts(prompts)
    if not isinstance(responses, (list, tuple)) or len(responses) != len(prompts):
        raise ValueError(f"responses must be a list with one list per prompt ({len(prompts)}), "
                         f"got {type(responses).__name__} of length {len(responses) if hasattr(responses, '__len__') else '?'}")
    k = len(responses[0])
    if k < 2 or any(len(r) != k for r in responses):
        raise ValueError(f"every prompt needs the same number K >= 2 of responses, got lengths {sorted({len(r) for r in responses})}")
    if not 0.0 <= flip_rate <= 0.5:
        raise ValueError(f"flip_rate must be in [0, 0.5], got {flip_rate!r}")
    gold = torch.tensor([[float(gold_fn(p, y)) for y in ys] for p, ys in zip(prompts, responses)],
                        dtype=torch.float64)  # (N, K)
    chosen, rejected = ranking_to_pairs(noisy_ranking(gold, temperature, generator))  # (N, C(K,2)) each
    flips = torch.rand(chosen.shape, generator=generator, dtype=torch.float64) < flip_rate
    chosen, rejected = torch.where(flips, rejected, chosen), torch.where(flips, chosen, rejected)
    rows = []
    for i, (p, ys) in enumerate(zip(prompts, responses)):
        for a, b in zip(chosen[i].tolist(), rejected[i].tolist()):
            if drop_ties and gold[i, a] == gold[i, b]:
                continue
            rows.append({"prompt": p, "chosen": ys[a], "rejected": ys[b], "gold_chosen": float(gold[i, a]),
                         "gold_rejected": float(gold[i, b]), "prompt_index": i})
    return rows


def label_pairs(prompts, responses, scorer: Callable, *, score_key: str = "score",
                measure: Callable[[str, str], float] | None = None, measure_key: str = "gold",
                temperature: float = 0.0, flip_rate: float = 0.0, drop_ties: bool = True,
                generator=None) -> list[dict]:
    """Rank-and-pair with any batched scorer: a reward model, a verifier, a judge, the gold.

    prompts: N strings; responses: N lists of responses, ANY number per prompt (a prompt with
    fewer than 2 is skipped: nothing to compare). scorer(flat_prompts, flat_responses) -> M
    numbers (a (M,) tensor or a list) for the M (prompt, response) pairs of all prompts, flattened
    prompt by prompt: the reward contract fn(prompts, responses). Each prompt's responses are
    ranked by their scores (`noisy_ranking` with `temperature`), split into their C(K, 2) pairs,
    flipped independently with probability `flip_rate` (the generator is drawn only for noise
    that is switched on), and, with `drop_ties`, pairs whose two scores are equal are dropped.

    Returns rows {"prompt", "chosen", "rejected", "<score_key>_chosen", "<score_key>_rejected",
    "prompt_index"} (the index into `prompts`); with `measure(prompt, response) -> float` (e.g. a
    hidden gold used only to measure the labeler) also "<measure_key>_chosen" and
    "<measure_key>_rejected". Every response is scored in one call, singletons included, so the
    scorer sees the same batches whatever is later skipped.
    """
    _check_prompts(prompts)
    if not isinstance(responses, (list, tuple)) or len(responses) != len(prompts):
        raise ValueError(f"responses must be a list with one list of responses per prompt ({len(prompts)}), "
                         f"got {type(responses).__name__} of length "
                         f"{len(responses) if hasattr(responses, '__len__') else '?'}")
    if any(isinstance(ys, str) or not isinstance(ys, (list, tuple)) for ys in responses):
        raise ValueError("responses must hold one LIST of response strings per prompt, got a str or another type")
    if not callable(scorer):
        raise ValueError(f"scorer must be callable as scorer(prompts, responses) -> scores, got {type(scorer).__name__}")
    if not 0.0 <= flip_rate <= 0.5:
        raise ValueError(f"flip_rate must be in [0, 0.5], got {flip_rate!r}")
    if score_key == measure_key and measure is not None:
        raise ValueError(f"score_key and measure_key must differ, both are {score_key!r}")
    flat_p = [p for p, ys in zip(prompts, responses) for _ in ys]
    flat_y = [y for ys in responses for y in ys]
    if not flat_y:
        return []
    out = scorer(flat_p, flat_y)
    scores = out.detach().cpu().tolist() if isinstance(out, torch.Tensor) else list(out)
    if len(scores) != len(flat_y) or (isinstance(out, torch.Tensor) and out.ndim != 1):
        raise ValueError(f"scorer must return one score per response, ({len(flat_y)},), got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else len(scores)}")
    rows, start = [], 0
    for i, (p, ys) in enumerate(zip(prompts, responses)):
        k, start = len(ys), start + len(ys)
        if k < 2:
            continue
        s = torch.tensor([[float(x) for x in scores[start - k:start]]], dtype=torch.float64)  # (1, K)
        chosen, rejected = ranking_to_pairs(noisy_ranking(s, temperature, generator))  # (1, C(K,2)) each
        if flip_rate > 0:
            flips = torch.rand(chosen.shape, generator=generator, dtype=torch.float64) < flip_rate
            chosen, rejected = torch.where(flips, rejected, chosen), torch.where(flips, chosen, rejected)
        for a, b in zip(chosen[0].tolist(), rejected[0].tolist()):
            if drop_ties and s[0, a] == s[0, b]:
                continue
            row = {"prompt": p, "chosen": ys[a], "rejected": ys[b], f"{score_key}_chosen": float(s[0, a]),
                   f"{score_key}_rejected": float(s[0, b]), "prompt_index": i}
            if measure is not None:
                row[f"{measure_key}_chosen"] = float(measure(p, ys[a]))
                row[f"{measure_key}_rejected"] = float(measure(p, ys[b]))
            rows.append(row)
    return rows


def save_pairs(rows: list[dict], path) -> Path:
    """Write preference rows as JSONL (one object per line, sorted keys) for `load_pairs`."""
    if not rows or not all({"prompt", "chosen", "rejected"} <= set(r) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts with keys prompt, chosen, rejected")
    return write_jsonl(list(rows), path)


def load_pairs(path):
    """Read preference rows saved by `save_pairs` with `datasets.load_dataset("json", ...)`.

    Returns a `datasets.Dataset` (columns prompt, chosen, rejected, ...; `.to_list()` gives dicts),
    the format TRL's DPOTrainer reads. Progress bars are switched off for the call.
    """
    import datasets
    from datasets.utils import logging as ds_logging

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no preference file at {path.name}: expected a JSONL written by save_pairs")
    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


# ------------------------------------------------------------------------------ pairwise judges


_REFUSAL = re.compile(r"\b(i cannot|i can't|i can not|i won't|unable to|refuse|sorry|as an ai)\b")
_TIE = re.compile(r"\b(tie|equal|equally|same|neither|both are)\b")
_A = re.compile(r"(\[\[a\]\]|\(a\)|\b(response|output|answer|assistant) a\b|^a\b|\bfirst\b)")
_B = re.compile(r"(\[\[b\]\]|\(b\)|\b(response|output|answer|assistant) b\b|^b\b|\bsecond\b)")


def parse_verdict(text) -> str:
    """One raw judge answer -> one of VERDICTS.

    "A", "[[A]]", "(a)", "Response A is better", "first" -> "first"; the same with B / second ->
    "second"; "tie", "they are equal", "neither" -> "tie"; "I cannot judge this", "Sorry, ..." ->
    "refusal"; anything else, a non-str, or text that names both A and B -> "unparsable".
    Case and surrounding space and punctuation are ignored."""
    if not isinstance(text, str):
        return "unparsable"
    t = text.strip().lower().strip(" .!:;\"'")
    if not t:
        return "unparsable"
    if _REFUSAL.search(t):
        return "refusal"
    a, b = bool(_A.search(t)), bool(_B.search(t))
    if a and not b:
        return "first"
    if b and not a:
        return "second"
    if _TIE.search(t) and not (a or b):
        return "tie"
    return "unparsable"


def _check_triplets(prompts, firsts, seconds):
    for name, v in (("prompts", prompts), ("firsts", firsts), ("seconds", seconds)):
        if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"{name} must be a list of str")
    if not (len(prompts) == len(firsts) == len(seconds)) or not prompts:
        raise ValueError(f"prompts, firsts and seconds must be non-empty and of one length, got "
                         f"{len(prompts)}, {len(firsts)}, {len(seconds)}")


def judge_verdicts(judge: Callable, prompts, firsts, seconds) -> list[str]:
    """Call a pairwise judge and parse its answers: list of VERDICTS, one per pair. The judge must
    return one answer per pair (ValueError otherwise: a length mismatch would shift every label)."""
    _check_triplets(prompts, firsts, seconds)
    raw = judge(list(prompts), list(firsts), list(seconds))
    if not isinstance(raw, (list, tuple)) or len(raw) != len(prompts):
        raise ValueError(f"the judge must return one answer per pair ({len(prompts)}), got "
                         f"{len(raw) if hasattr(raw, '__len__') else type(raw).__name__}")
    return [parse_verdict(r) for r in raw]


def labels_from_verdicts(prompts, firsts, seconds, verdicts, swapped_verdicts=None,
                         counts: Counter | None = None) -> tuple[list[dict], Counter]:
    """Preference rows from parsed verdicts, with every bad verdict dropped and counted.

    verdicts: one of VERDICTS per pair (firsts[i] shown first); swapped_verdicts: the same pairs
    shown the other way round, or None. A pair becomes a row {"prompt", "chosen", "rejected",
    "pair_index"} only if its verdict is "first" or "second" and, with swapped_verdicts, the
    swapped verdict names the same response. Returns (rows, counts): each pair adds one to
    `counts` (a Counter, new if None) under "labeled", "tie", "refusal", "unparsable" or
    "inconsistent" (for two bad answers, the first one's kind)."""
    _check_triplets(prompts, firsts, seconds)
    for name, v in (("verdicts", verdicts), ("swapped_verdicts", swapped_verdicts)):
        if v is None and name == "swapped_verdicts":
            continue
        if not isinstance(v, (list, tuple)) or len(v) != len(prompts) or any(x not in VERDICTS for x in v):
            raise ValueError(f"{name} must be a list of {len(prompts)} entries of {VERDICTS}")
    counts = Counter() if counts is None else counts
    rows = []
    for i, (p, a, b) in enumerate(zip(prompts, firsts, seconds)):
        answers = (verdicts[i],) + (() if swapped_verdicts is None else (swapped_verdicts[i],))
        bad = next((v for v in answers if v not in ("first", "second")), None)
        if bad is not None:
            counts[bad] += 1
            continue
        a_wins = verdicts[i] == "first"
        if swapped_verdicts is not None and a_wins != (swapped_verdicts[i] == "second"):
            counts["inconsistent"] += 1
            continue
        counts["labeled"] += 1
        rows.append({"prompt": p, "chosen": a if a_wins else b, "rejected": b if a_wins else a, "pair_index": i})
    return rows, counts


def judge_label_pairs(judge: Callable, prompts, firsts, seconds, both_orders: bool = False,
                      counts: Counter | None = None) -> tuple[list[dict], Counter]:
    """Ask a pairwise judge about every pair (with both_orders, also with the two responses
    swapped) and turn its answers into preference rows: `judge_verdicts`, then
    `labels_from_verdicts` (which drops and counts ties, refusals, unparsable and inconsistent
    answers). Returns (rows, counts). `judges.label_pairs` is this function.

    For K = 2 and an order-blind judge that answers "A" where score(first) > score(second), "B"
    where it is lower and "tie" otherwise (`judges.verdicts_from_margin`), the rows' (prompt,
    chosen, rejected) are those of rank-and-pair `label_pairs(prompts, [[first, second], ...],
    score)` with its default drop_ties (tests/test_labeling.py)."""
    v1 = judge_verdicts(judge, prompts, firsts, seconds)
    v2 = judge_verdicts(judge, prompts, seconds, firsts) if both_orders else None
    return labels_from_verdicts(prompts, firsts, seconds, v1, v2, counts)
