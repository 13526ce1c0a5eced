"""Rewards for the tiny world: sentiment (a lexicon proxy and the world's gold scorer), a
several-factor review reward, and arithmetic verifiers (exact, format, process, and a loose one).

Introduced in notebooks/03 (sentiment of samples), used by notebooks/04 (REINFORCE on a verifiable
task), 05 (reward models vs a known ground truth), 08 (RLHF), 14 (RLVR and reward hacking).

Sentiment
    vader_sentiment(texts)        VADER compound score in [-1, 1] per text (offline lexicon). A PROXY
                                  with known holes (the traps below).
    gold_sentiment_reward(texts)  the world's own scorer (minirl.world.gold_sentiment), the ground
                                  truth against which a proxy is judged.
    review_reward(prompts, responses, ...)  sentiment + length + repetition + on-topic, with its
                                  components; several factors so that methods can trade them off.
    load_hub_sentiment_classifier(...)  the GPT-2-IMDB classifier for GPU runs; fails fast offline.

    TRAPS of the lexicon proxy (checked in tests/test_world.py and tests/test_models.py):
    1. lexicon gap: VADER does not know the world's food words (soggy, bland, stale, tasty, crispy,
       ...), so "the soup was soggy and bland." scores 0, not negative;
    2. counterfactuals: "i hoped the soup would be great, but it was cold." scores positive;
    3. farming: repeated positive words and exclamation marks raise the compound score
       ("great great great!!!" > "great."), a hack a policy finds quickly. The gold scorer counts a
       word once and ignores punctuation; `review_reward` penalizes repetition.

Arithmetic (responses in the world's format " 12+7=19. 19-5=14. A: 14")
    parse_answer(response)        the integer after the final "A:", or None if the format is broken
    format_reward(response)       1 if the response is exactly steps "lhs=value." then "A: n", else 0
    exact_match_reward(response, answer)   1 if parse_answer(response) == answer (outcome reward)
    process_reward(response, reduce)       per-step correctness of "lhs=value", min or mean
    loose_match_reward(response, answer)   1 if the answer appears ANYWHERE as a number. TRAP: a
                                  response that lists many numbers ("A: 1 2 3 ... 99") is "right"
                                  on most problems; so is copying an operand when the answer
                                  equals it. Deliberately hackable (lesson 14).
    arithmetic_rewards(responses, answers, kind)  any of the above on a batch -> tensor (B,)
"""
from __future__ import annotations

import re

import torch

from . import world

# ---------------------------------------------------------------- sentiment
_VADER = None


def _check_texts(texts, name="texts"):
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"{name} must be a list of str, got {type(texts).__name__}")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must hold only str")


def vader_sentiment(texts) -> torch.Tensor:
    """VADER compound sentiment in [-1, 1] for each text -> tensor (B,) in torch's default dtype. Offline.

    A lexicon scorer: it sums word valences (with negation, 'but' and intensifier rules) and
    squashes with x / sqrt(x^2 + 15). See the module docstring for the traps it falls into."""
    global _VADER
    _check_texts(texts)
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return torch.tensor([_VADER.polarity_scores(t)["compound"] for t in texts], dtype=torch.get_default_dtype())


def gold_sentiment_reward(texts) -> torch.Tensor:
    """The world's ground-truth sentiment in [-1, 1] per text -> tensor (B,) in torch's default dtype."""
    _check_texts(texts)
    return torch.tensor([world.gold_sentiment(t) for t in texts], dtype=torch.get_default_dtype())


SENTIMENT_SCORERS = {"vader": vader_sentiment, "gold": gold_sentiment_reward}

_TOKEN_RE = re.compile(r"[a-z']+|[0-9]+|[^\sa-z0-9]")


def repetition_fraction(text: str) -> float:
    """Fraction of word tokens (and punctuation marks) in `text` that repeat an earlier word
    bigram: 0 for text without repeated bigrams, towards 1 for "great great great ...".
    Sentence-level templates repeat "the" and "was" but rarely a whole bigram twice."""
    toks = _TOKEN_RE.findall(text.lower())
    if len(toks) < 2:
        return 0.0
    seen, rep = set(), 0
    for bg in zip(toks, toks[1:]):
        rep += bg in seen
        seen.add(bg)
    return rep / (len(toks) - 1)


def _mentioned_items(text: str) -> set:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return {it for it in world.ITEMS if it in words}


DEFAULT_REVIEW_WEIGHTS = {"sentiment": 1.0, "length": 0.5, "repetition": 1.0, "on_topic": 0.5}


def review_reward(prompts, responses, target: str = "positive", sentiment: str = "vader",
                  min_words: int = 6, max_words: int = 30, weights: dict | None = None):
    """Several-factor reward for continuing or writing a review -> (total (B,), components dict).

    components (each a tensor (B,) in the default dtype):
      sentiment   scorer(prompt + response) in [-1, 1], sign flipped if target == "negative"
                  (scorer "vader" = the hackable proxy, "gold" = the world's ground truth)
      length      1 if the response has min_words..max_words words, falling linearly to 0 at 0 words
                  and at 2 * max_words
      repetition  repetition_fraction(response), in [0, 1] (subtracted)
      on_topic    1 if the response mentions no dish other than those in the prompt, else 0
    total = w_s * sentiment + w_l * (length - 1) - w_r * repetition + w_t * (on_topic - 1), so a
    well-formed, on-topic, non-repetitive review scores its sentiment. weights default to
    DEFAULT_REVIEW_WEIGHTS; set w_r = 0 to make the farming trap free.
    """
    _check_texts(prompts, "prompts")
    _check_texts(responses, "responses")
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have equal lengths, got {len(prompts)} and {len(responses)}")
    if target not in ("positive", "negative"):
        raise ValueError(f"target must be 'positive' or 'negative', got {target!r}")
    if sentiment not in SENTIMENT_SCORERS:
        raise ValueError(f"sentiment must be one of {sorted(SENTIMENT_SCORERS)}, got {sentiment!r}")
    if not 0 < min_words <= max_words:
        raise ValueError(f"need 0 < min_words <= max_words, got {min_words}, {max_words}")
    w = dict(DEFAULT_REVIEW_WEIGHTS, **(weights or {}))
    unknown = set(w) - set(DEFAULT_REVIEW_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown weight names {sorted(unknown)}; expected {sorted(DEFAULT_REVIEW_WEIGHTS)}")
    sign = 1.0 if target == "positive" else -1.0
    sent = sign * SENTIMENT_SCORERS[sentiment]([p + r for p, r in zip(prompts, responses)])
    n = torch.tensor([len(r.split()) for r in responses], dtype=torch.get_default_dtype())
    length = torch.where(n < min_words, n / min_words,
                         torch.where(n > max_words, (1 - (n - max_words) / max_words).clamp(min=0), torch.ones_like(n)))
    rep = torch.tensor([repetition_fraction(r) for r in responses], dtype=torch.get_default_dtype())
    topic = torch.tensor([float(_mentioned_items(r) <= _mentioned_items(p)) for p, r in zip(prompts, responses)],
                         dtype=torch.get_default_dtype())
    total = w["sentiment"] * sent + w["length"] * (length - 1) - w["repetition"] * rep + w["on_topic"] * (topic - 1)
    return total, {"sentiment": sent, "length": length, "repetition": rep, "on_topic": topic}


def load_hub_sentiment_classifier(model_id: str = "lvwerra/distilbert-imdb", device=None, timeout: float = 3.0):
    """A transformers sentiment classifier from the hub (for GPU runs, as in TRL's GPT-2 IMDB
    example) -> a function texts -> tensor (B,) in torch's default dtype of the POSITIVE-class logit.

    Raises `minirl.models.HubUnavailableError` within about `timeout` seconds when HF_HUB_OFFLINE=1
    or the hub is unreachable and the model is not cached. Not used by the CPU lessons or tests.
    """
    from transformers import pipeline

    from .models import HubUnavailableError, _offline, hub_reachable

    local_only = _offline() or not hub_reachable(timeout)
    try:
        if local_only:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            mdl = AutoModelForSequenceClassification.from_pretrained(model_id, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(model_id, local_files_only=True)
            pipe = pipeline("sentiment-analysis", model=mdl, tokenizer=tok, device=device)
        else:
            pipe = pipeline("sentiment-analysis", model=model_id, device=device)
    except OSError as e:
        raise HubUnavailableError(
            f"cannot load {model_id!r}: the hub is offline or unreachable and it is not cached; "
            f"use minirl.rewards.vader_sentiment (offline) instead"
        ) from e

    def score(texts) -> torch.Tensor:
        _check_texts(texts)
        outs = pipe(list(texts), top_k=None, function_to_apply="none", truncation=True)
        return torch.tensor([next(o["score"] for o in out if o["label"].upper() in ("POSITIVE", "LABEL_1"))
                             for out in outs], dtype=torch.get_default_dtype())

    return score


# ---------------------------------------------------------------- arithmetic
_STEP = r"[0-9]+(?:[+\-*][0-9]+)+=-?[0-9]+\."
_FORMAT_RE = re.compile(rf"^\s*(?:{_STEP}\s+)*A: (-?[0-9]+)\s*$")
_ANSWER_RE = re.compile(r"A:\s*(-?[0-9]+)\s*$")
_STEP_RE = re.compile(r"([0-9]+(?:[+\-*][0-9]+)+)=(-?[0-9]+)")


def _check_response(response):
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")


def eval_expression(expr: str) -> int:
    """Value of an expression of non-negative integers with + - * (usual precedence)."""
    if not re.fullmatch(r"[0-9]+(?:[+\-*][0-9]+)*", expr):
        raise ValueError(f"expr must be integers joined by + - *, got {expr!r}")
    total, sign = 0, 1
    for term_op in re.findall(r"([+\-]?)([0-9*]+)", expr):
        op, term = term_op
        prod = 1
        for f in term.split("*"):
            prod *= int(f)
        total += (-1 if op == "-" else 1) * prod
    return total


def parse_answer(response: str):
    """The integer after the final "A:" at the END of the response (trailing spaces allowed), or
    None. "... A: 14" -> 14; "A: 14 and more" -> None."""
    _check_response(response)
    m = _ANSWER_RE.search(response)
    return int(m.group(1)) if m else None


def format_reward(response: str) -> float:
    """1.0 if the response is exactly zero or more steps "lhs=value." then "A: n", else 0.0.
    Says nothing about correctness: " 2+2=5. A: 5" has the format."""
    _check_response(response)
    return float(_FORMAT_RE.match(response) is not None)


def exact_match_reward(response: str, answer: int) -> float:
    """Outcome reward: 1.0 if the final "A: n" equals `answer`, else 0.0 (broken format = 0)."""
    return float(parse_answer(response) == int(answer))


def loose_match_reward(response: str, answer: int) -> float:
    """A deliberately LOOSE verifier: 1.0 if `answer` appears anywhere in the response as a
    whole number. TRAP: listing many numbers, or echoing an operand, passes it. Do not use it
    except to watch it being hacked (lesson 14)."""
    _check_response(response)
    return float(str(int(answer)) in re.findall(r"-?[0-9]+", response))


def process_reward(response: str, reduce: str = "min") -> float:
    """Process reward: the correctness of each written step "lhs=value" (1 right, 0 wrong),
    reduced by "min" (every step must be right) or "mean" (the fraction right). A response with
    no step scores 0."""
    _check_response(response)
    if reduce not in ("min", "mean"):
        raise ValueError(f"reduce must be 'min' or 'mean', got {reduce!r}")
    steps = _STEP_RE.findall(response)
    if not steps:
        return 0.0
    ok = [float(eval_expression(lhs) == int(val)) for lhs, val in steps]
    return min(ok) if reduce == "min" else sum(ok) / len(ok)


ARITHMETIC_REWARDS = ("exact", "format", "loose", "process_min", "process_mean")


def arithmetic_rewards(responses, answers, kind: str = "exact") -> torch.Tensor:
    """One of ARITHMETIC_REWARDS for each (response, answer) -> tensor (B,) in torch's default dtype."""
    _check_texts(responses, "responses")
    if len(answers) != len(responses):
        raise ValueError(f"answers must match responses in length, got {len(answers)} and {len(responses)}")
    if kind not in ARITHMETIC_REWARDS:
        raise ValueError(f"kind must be one of {ARITHMETIC_REWARDS}, got {kind!r}")
    if kind == "exact":
        vals = [exact_match_reward(r, a) for r, a in zip(responses, answers)]
    elif kind == "format":
        vals = [format_reward(r) for r in responses]
    elif kind == "loose":
        vals = [loose_match_reward(r, a) for r, a in zip(responses, answers)]
    else:
        vals = [process_reward(r, kind.split("_")[1]) for r in responses]
    return torch.tensor(vals, dtype=torch.get_default_dtype())
