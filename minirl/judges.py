"""AI feedback: judges that label pairs or score responses, their biases measured against a gold,
Constitutional AI's critique -> revision step, and CGPO's pieces (derived in notebooks/15).

Contracts (the same as the rest of the library):
    a SCORER is fn(prompts, responses) -> tensor (B,): one score per response (like
        `rewards.review_reward`'s total); a per-text fn(prompt, response) -> float plugs into RL with
        `minirl.rollout.text_scorer`.
    a PAIRWISE JUDGE is fn(prompts, firsts, seconds) -> list[str]: one RAW verdict per pair, as an
        LLM judge answers in text ("A", "[[B]]", "tie", "I cannot judge this"). `parse_verdict`
        maps each to one of VERDICTS; `label_pairs` turns verdicts into preference rows
        {"prompt", "chosen", "rejected"} (the layout of `reward_model.preference_pairs` and of
        `dpo.train_dpo`), with a defined treatment and a counter for every bad verdict.
        The verdict parsing and the labeling live in `minirl.labeling` (beside rank-and-pair with
        any scorer); VERDICTS, parse_verdict, judge_verdicts, labels_from_verdicts and label_pairs
        (= `labeling.judge_label_pairs`) are re-exported here under their old names.
    a CONSTRAINT JUDGE is fn(prompts, responses) -> bool tensor (B,): True where the response passes.

Bad judge output (`parse_verdict`):
    "tie"        the judge prefers neither: no label (a DPO pair needs a winner); counted
    "refusal"    the judge declined ("i cannot", "sorry", ...): no label; counted
    "unparsable" anything else, or text naming both A and B: no label; counted
    A swap-consistent labeler (`label_pairs(..., both_orders=True)`) asks twice, (a, b) and (b, a),
    and keeps a pair only if both answers name the same response; "inconsistent" is counted too.

Measurements, each (mean, standard error) over pairs (`mean_se`):
    agreement(judge_first, gold_first)       fraction of pairs where judge and gold pick the same
    position_bias(picks_ab, picks_ba)        P(judge picks whichever response is shown first) - 1/2,
                                             with both orders of every pair; and the consistency
    excess_preference(judge_p, gold_p)       P(judge prefers the member with property P) minus
                                             P(gold prefers it), on the same pairs: length bias
                                             (P = longer), self-preference (P = own sample)

Constitutional AI (Bai et al. 2022), programmatic: `critique` checks a response against the
written principles of `CONSTITUTION`, `revise` rewrites it to satisfy the critiques. Programmatic
because the policy here has 0.3M parameters and writes one-line reviews: it cannot read a principle
and answer with a critique in English. The critic reads sentiment with the VADER lexicon, which
sees only part of the world's truth (minirl.rewards: it does not know "soggy" or "bland" and reads
"i hoped it would be great, but it was cold" as positive), so its revisions inherit those blind
spots, as a model critic would inherit its own.

CGPO (Xu et al. 2024, "The Perfect Blend: Redefining RLHF with Mixture of Judges"):
    calibrated_reward(r, r_baseline)     sigma(r(y) - r(y_baseline)): the Bradley-Terry probability
                                         that y beats a baseline response to the same prompt
    all_pass(judges, prompts, responses) the AND of binary constraint judges, and each judge's verdicts
    constrained_rewards(r, passed)       CRPG's gate: the reward where every judge passes, else a
                                         floor (0, the minimum of a calibrated reward)
    constrained_best(r, passed, G)       CRRAFT's filter: per group of G, the best passing sample or -1
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch

from .checks import check_tensor
from .labeling import VERDICTS, _check_triplets, judge_verdicts, labels_from_verdicts, parse_verdict  # noqa: F401
from .labeling import judge_label_pairs as label_pairs  # noqa: F401  (re-exported under the old name)
from .rewards import repetition_fraction
from .world import ITEMS



# ------------------------------------------------------------------------------ statistics


def mean_se(x) -> tuple[float, float]:
    """(mean, standard error) of a 1-D sample: std (n - 1) / sqrt(n). Bools count as 0/1."""
    x = torch.as_tensor(x)
    check_tensor(x, "x", ndim=1)
    if x.numel() < 2:
        raise ValueError(f"a standard error needs at least 2 values, got {x.numel()}")
    x = x.double()
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


def _bool1d(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    check_tensor(x, name, ndim=1)
    if x.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {x.dtype}")
    return x


def agreement(judge_first, gold_first) -> tuple[float, float]:
    """Fraction of pairs on which the judge's pick equals the gold's, (mean, SE).

    judge_first, gold_first: bool (N,), True where that labeler prefers the pair's first response.
    Pairs the gold calls a tie, or the judge did not label, must be left out by the caller."""
    j, g = _bool1d(judge_first, "judge_first"), _bool1d(gold_first, "gold_first")
    if j.shape != g.shape:
        raise ValueError(f"judge_first and gold_first must have one shape, got {tuple(j.shape)}, {tuple(g.shape)}")
    return mean_se(j == g)


def position_bias(picks_first_ab, picks_first_ba) -> dict:
    """Position bias from asking the judge about every pair in both orders.

    picks_first_ab: bool (N,), the judge picked the response shown FIRST when pair i was shown as
    (a, b); picks_first_ba: the same when it was shown as (b, a). An order-blind judge picks a in
    both orders or b in both, so exactly one of the two is True and its first-pick rate is 1/2.
    Returns {"bias", "bias_se"}: P(pick the first shown) - 1/2, with the SE over pairs of the
    per-pair mean (the two answers about one pair are not independent), and {"consistency",
    "consistency_se"}: the fraction of pairs whose two answers name the same response."""
    ab, ba = _bool1d(picks_first_ab, "picks_first_ab"), _bool1d(picks_first_ba, "picks_first_ba")
    if ab.shape != ba.shape:
        raise ValueError(f"picks_first_ab and picks_first_ba must have one shape, got {tuple(ab.shape)}, {tuple(ba.shape)}")
    per_pair = (ab.double() + ba.double()) / 2 - 0.5  # (N,)
    bias, bias_se = mean_se(per_pair)
    cons, cons_se = mean_se(ab != ba)  # picked a twice or b twice
    return {"bias": bias, "bias_se": bias_se, "consistency": cons, "consistency_se": cons_se}


def excess_preference(judge_prefers, gold_prefers) -> tuple[float, float]:
    """How much more often the judge prefers the member of each pair that has a property P than the
    gold does, (mean, SE) over pairs of 1[judge picks P] - 1[gold picks P] (a paired difference).

    judge_prefers, gold_prefers: bool (N,), True where that labeler picks the member with P. With
    P = "the longer response" this is the judge's length bias beyond whatever the gold's own
    taste for length is; with P = "the judge's own sample", its self-preference. 0 for a judge
    that agrees with the gold on every pair, whatever the gold's own correlation with P."""
    j, g = _bool1d(judge_prefers, "judge_prefers"), _bool1d(gold_prefers, "gold_prefers")
    if j.shape != g.shape:
        raise ValueError(f"judge_prefers and gold_prefers must have one shape, got {tuple(j.shape)}, {tuple(g.shape)}")
    return mean_se(j.double() - g.double())


# ------------------------------------------------------------------------------ verdicts


def verdicts_from_margin(margin: torch.Tensor, tie_margin: float = 0.0) -> list[str]:
    """A scoring judge's answers: "A" where margin = s(first) - s(second) > tie_margin, "B" where it
    is < -tie_margin, "tie" otherwise (|margin| <= tie_margin; an exact tie when tie_margin = 0).
    NaN margins (a response the judge could not score) become "I cannot judge this pair"."""
    check_tensor(margin, "margin", ndim=1, floating=True)
    if not tie_margin >= 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin!r}")
    out = []
    for m in margin.tolist():
        if math.isnan(m):
            out.append("I cannot judge this pair")
        else:
            out.append("A" if m > tie_margin else ("B" if m < -tie_margin else "tie"))
    return out


# ------------------------------------------------------------------------------ a language-model judge


def dish_of(prompt: str) -> str:
    """The dish an instruction such as "write a positive review of the soup:" asks about."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    words = re.findall(r"[a-z]+", prompt.lower())
    if not words or words[-1] not in ITEMS:
        raise ValueError(f"expected an instruction ending in a dish of the tiny world, got {prompt!r}")
    return words[-1]


@torch.no_grad()
def _response_logps(model, tokenizer, contexts, parts) -> list[torch.Tensor]:
    """log p(part_k | context, part_1..part_{k-1}) for every row, each part summed over its tokens:
    one forward over context + part_1 + ... per row (no EOS: the judge scores the text it reads).
    Returns one (B,) tensor per part."""
    from .lm import sequence_logprobs, right_pad

    ids, spans = [], []
    for i, c in enumerate(contexts):
        row = tokenizer(c, add_special_tokens=False)["input_ids"]
        sp = []
        for k, part in enumerate(parts):
            toks = tokenizer(part[i], add_special_tokens=False)["input_ids"]
            sp.append((len(row), len(row) + len(toks)))
            row = row + toks
        ids.append(torch.tensor(row))
        spans.append(sp)
    input_ids, mask = right_pad(ids, tokenizer.pad_token_id)
    was = model.training
    model.eval()
    lp = sequence_logprobs(model, input_ids, mask)  # (B, T): entry t = log p(token t | < t)
    model.train(was)
    return [torch.stack([lp[i, spans[i][k][0]:spans[i][k][1]].sum() for i in range(len(contexts))])
            for k in range(len(parts))]


def _instructions(prompts):
    pos = [f"write a positive review of the {dish_of(p)}:" for p in prompts]
    neg = [f"write a negative review of the {dish_of(p)}:" for p in prompts]
    return pos, neg


def instruction_contrast(model, tokenizer, prompts, responses) -> torch.Tensor:
    """The language-model judge's score of each response, (B,):

        s(y) = log p(y | "write a positive review of the <dish>:") - log p(y | "write a negative ...")

    the log-likelihood ratio of the two instructions given y (Bayes: the log-odds that y answers
    the positive one, minus the prior log-odds). It sums over y's tokens (no EOS), so its
    size grows with length. A scorer: fn(prompts, responses) -> (B,) once model and tokenizer
    are bound."""
    if isinstance(responses, str) or isinstance(prompts, str) or len(responses) != len(prompts) or not prompts:
        raise ValueError("prompts and responses must be non-empty lists of one length")
    pos, neg = _instructions(prompts)
    return _response_logps(model, tokenizer, pos, [list(responses)])[0] - \
        _response_logps(model, tokenizer, neg, [list(responses)])[0]


def pair_contrast(model, tokenizer, prompts, firsts, seconds) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge reading a pair in ONE context, instruction + first + second (+ EOS), as an LLM
    judge reads "Response A ... Response B": returns (s(first), s(second | first)), each (B,): the
    first response's score equals `instruction_contrast` (it is read right after the instruction),
    the second's is read after the first. Two forwards (one per instruction)."""
    _check_triplets(prompts, firsts, seconds)
    pos, neg = _instructions(prompts)
    p1, p2 = _response_logps(model, tokenizer, pos, [list(firsts), list(seconds)])
    n1, n2 = _response_logps(model, tokenizer, neg, [list(firsts), list(seconds)])
    return p1 - n1, p2 - n2


def make_lm_judge(model, tokenizer, tie_margin: float = 0.0, in_context: bool = True) -> Callable:
    """A pairwise judge built from a language model: fn(prompts, firsts, seconds) -> raw answers.

    in_context=True: the judge reads both responses in one context (`pair_contrast`) and answers
    "A" if s(first) - s(second | first) > tie_margin, "B" if it is below -tie_margin, "tie"
    otherwise. in_context=False scores each response alone (`instruction_contrast`), so it is
    order-blind by construction. Two identical responses tie (whatever float noise padding adds);
    an empty response gets "I cannot judge this pair"."""
    def judge(prompts, firsts, seconds):
        _check_triplets(prompts, firsts, seconds)
        if in_context:
            s1, s2 = pair_contrast(model, tokenizer, prompts, firsts, seconds)
        else:
            s1 = instruction_contrast(model, tokenizer, prompts, firsts)
            s2 = instruction_contrast(model, tokenizer, prompts, seconds)
        empty = torch.tensor([not a.strip() or not b.strip() for a, b in zip(firsts, seconds)])
        same = torch.tensor([a == b for a, b in zip(firsts, seconds)])
        margin = torch.where(same, torch.zeros_like(s1), s1 - s2)  # identical texts tie exactly
        return verdicts_from_margin(torch.where(empty, torch.full_like(s1, math.nan), margin), tie_margin)
    return judge


# ------------------------------------------------------------------------------ constitutional AI


CONSTITUTION = {
    "on_dish": "Write about the dish you were asked about: name it, and no other dish.",
    "no_repetition": "Do not repeat a sentence or farm words or exclamation marks.",
    "faithful": "Stay faithful to the instruction's sentiment: a positive review has no sentence that "
                "reads negative.",
}

_SENT = re.compile(r"[^.!?]+[.!?]*")


def sentences(text: str) -> list[str]:
    """Split a review into sentences (each keeps its final punctuation, stripped of spaces)."""
    return [s.strip() for s in _SENT.findall(text) if s.strip()]


def mentioned_dishes(text: str) -> set:
    """The dishes of the tiny world named in `text`."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return {d for d in ITEMS if d in words}


def _vader(texts: list[str]) -> list[float]:
    from .rewards import vader_sentiment

    return vader_sentiment(texts).tolist() if texts else []


def critique(prompt: str, response: str) -> list[tuple[str, str]]:
    """Check `response` against CONSTITUTION for the instruction `prompt`: a list of
    (principle, sentence) critiques, empty if the response passes. "faithful" flags a sentence
    whose VADER compound score is below -0.05 (the critic's lexicon, not the world's gold);
    "no_repetition" flags a sentence seen before and one with "!"; "on_dish" flags a sentence
    naming another dish, or (sentence "") a response that never names the asked dish."""
    dish = dish_of(prompt)
    out, seen = [], set()
    sents = sentences(response)
    scores = _vader(sents)
    for s, v in zip(sents, scores):
        if s in seen or "!" in s:
            out.append(("no_repetition", s))
        seen.add(s)
        if mentioned_dishes(s) - {dish}:
            out.append(("on_dish", s))
        if v < -0.05:
            out.append(("faithful", s))
    if dish not in mentioned_dishes(response):
        out.append(("on_dish", ""))
    return out


REWRITE_WORDS = ("good", "lovely", "great", "perfect")


def revise(prompt: str, response: str, critiques: Sequence[tuple[str, str]]) -> str:
    """Rewrite `response` to answer every critique of `critique`: a sentence flagged "faithful" is
    REPLACED by "the <dish> was <w>." (w cycling through REWRITE_WORDS, so that a revision is about
    as long as the original and differs in what it says, not in how much), every second copy of
    a sentence is dropped, "!" become ".", another dish is renamed to the asked one, and if the
    dish is still not named the revision opens with "the <dish> was good.". Returns the revised
    response (leading space, like the world's responses)."""
    dish = dish_of(prompt)
    was = "were" if dish.endswith("s") else "was"
    flagged = {s for p, s in critiques if p == "faithful"}
    kept, seen, n_rewrites = [], set(), 0
    for s in sentences(response):
        if s in seen:
            continue
        seen.add(s)
        if s in flagged:
            s = f"the {dish} {was} {REWRITE_WORDS[n_rewrites % len(REWRITE_WORDS)]}."
            n_rewrites += 1
            if s in seen:
                continue
            seen.add(s)
        s = re.sub(r"!+", ".", s)
        for other in mentioned_dishes(s) - {dish}:
            s = re.sub(rf"\b{other}\b", dish, s)
        kept.append(s)
    text = " ".join(kept)
    if dish not in mentioned_dishes(text):
        text = f"the {dish} {was} good. {text}".strip()
    return " " + text


# ------------------------------------------------------------------------------ constraint judges and CGPO


def _texts(prompts, responses):
    for name, v in (("prompts", prompts), ("responses", responses)):
        if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"{name} must be a list of str")
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have one length, got {len(prompts)}, {len(responses)}")


def on_dish_judge(prompts, responses) -> torch.Tensor:
    """Constraint: the response names the asked dish and no other. bool (B,)."""
    _texts(prompts, responses)
    return torch.tensor([mentioned_dishes(r) == {dish_of(p)} for p, r in zip(prompts, responses)], dtype=torch.bool)


def no_repetition_judge(prompts, responses, max_fraction: float = 0.2) -> torch.Tensor:
    """Constraint: no sentence twice, no "!", and at most `max_fraction` of repeated word bigrams
    (`rewards.repetition_fraction`; the world's templates repeat "the <dish>" now and then, a
    farmed "great great great" repeats most). bool (B,)."""
    _texts(prompts, responses)
    if not 0 <= max_fraction < 1:
        raise ValueError(f"max_fraction must be in [0, 1), got {max_fraction!r}")
    ok = []
    for r in responses:
        sents = sentences(r)
        ok.append(len(set(sents)) == len(sents) and "!" not in r and repetition_fraction(r) <= max_fraction)
    return torch.tensor(ok, dtype=torch.bool)


def length_judge(min_words: int = 6, max_words: int = 30) -> Callable:
    """Constraint factory: the response has min_words..max_words words (`review_reward`'s range)."""
    if not 0 < min_words <= max_words:
        raise ValueError(f"need 0 < min_words <= max_words, got {min_words}, {max_words}")

    def judge(prompts, responses) -> torch.Tensor:
        _texts(prompts, responses)
        return torch.tensor([min_words <= len(r.split()) <= max_words for r in responses], dtype=torch.bool)
    return judge


def all_pass(judges: dict, prompts, responses) -> tuple[torch.Tensor, dict]:
    """The AND of binary constraint judges: (passed bool (B,), {name: bool (B,)}). With no judges
    every response passes."""
    if not isinstance(judges, dict):
        raise ValueError(f"judges must be a dict name -> fn(prompts, responses) -> bool (B,), got {type(judges).__name__}")
    _texts(prompts, responses)
    passed = torch.ones(len(responses), dtype=torch.bool)
    each = {}
    for name, fn in judges.items():
        v = fn(prompts, responses)
        if not isinstance(v, torch.Tensor) or v.dtype != torch.bool or v.shape != passed.shape:
            raise ValueError(f"judge {name!r} must return a bool tensor of shape {tuple(passed.shape)}, got {v!r:.60}")
        each[name] = v
        passed = passed & v
    return passed, each


def calibrated_reward(scores: torch.Tensor, baseline_scores: torch.Tensor) -> torch.Tensor:
    """CGPO's calibrated reward sigma(r(x, y) - r(x, y_baseline)), (B,), (B,) -> (B,) in (0, 1): the
    Bradley-Terry probability that y beats the baseline response of its prompt. It removes the
    reward model's per-prompt offset (r and r + c(x) give the same value) and bounds the reward."""
    check_tensor(scores, "scores", ndim=1, floating=True)
    if not isinstance(baseline_scores, torch.Tensor) or baseline_scores.shape != scores.shape:
        raise ValueError(f"baseline_scores must be a tensor of shape {tuple(scores.shape)}, got "
                         f"{tuple(baseline_scores.shape) if isinstance(baseline_scores, torch.Tensor) else type(baseline_scores).__name__}")
    return torch.sigmoid(scores - baseline_scores)


def constrained_rewards(rewards: torch.Tensor, passed: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """CRPG's gate: the reward where `passed`, `floor` where a constraint judge failed. (B,), bool
    (B,) -> (B,). With a calibrated reward in (0, 1), floor 0 puts every violation below every
    passing sample, so a group baseline pushes violations down."""
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    p = _bool1d(passed, "passed")
    if p.shape != rewards.shape:
        raise ValueError(f"passed must have shape {tuple(rewards.shape)}, got {tuple(p.shape)}")
    return torch.where(p, rewards, torch.full_like(rewards, floor))


def constrained_best(rewards: torch.Tensor, passed: torch.Tensor, group_size: int) -> torch.Tensor:
    """CRRAFT's filter: for each contiguous group of `group_size` samples, the index (into the flat
    batch) of the highest reward among those that pass every judge, or -1 if none passes. (B*G,),
    bool (B*G,) -> (B,) long. Ties go to the first."""
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    p = _bool1d(passed, "passed")
    if p.shape != rewards.shape:
        raise ValueError(f"passed must have shape {tuple(rewards.shape)}, got {tuple(p.shape)}")
    if not isinstance(group_size, int) or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size must be a positive int dividing {rewards.numel()}, got {group_size!r}")
    r = torch.where(p, rewards, torch.full_like(rewards, -math.inf)).view(-1, group_size)
    best = r.argmax(1) + torch.arange(r.shape[0]) * group_size
    return torch.where(p.view(-1, group_size).any(1), best, torch.full_like(best, -1))
