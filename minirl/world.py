"""The tiny world every language-model lesson lives in: restaurant reviews, arithmetic, instructions.

Made here from templates and word lists of our own (no copied text), deterministic given a seed
and `GENERATOR_VERSION`. Derived and first used in notebooks/03; later lessons (04 policy,
05 reward models, 08 PPO-RLHF, 10 DPO, 14 RLVR, ...) load the same tasks from here.

Three kinds of data, each a list of dicts with at least {"prompt", "response"}:

    reviews(n, seed)              one-line reviews of a dish, rating 1..5, varied length; each dict
                                  has "text" (= prompt + response), "item", "rating", "label"
                                  ("negative" / "neutral" / "positive"), "traps" (which lexicon
                                  traps the text contains), and prompt = its first few words.
    arithmetic_problems(n, seed)  "Q: 23+48-5=?" -> " 23+48=71. 71-5=66. A: 66" with "answer",
                                  "steps" and "level" (1: one-digit +, 2: two-digit +/-,
                                  3: small products, 4: three-term +/-, 5: a*b+c).
    instruction_pairs(n, seed)    SFT pairs: "write a positive review of the soup:" -> a review,
                                  "write a review of the soup:" -> a review of ANY rating (the mix
                                  an imitator copies), and the arithmetic Q -> worked answer.

Ready prompt sets for RL: `sentiment_prompts` (continue the first words of a review, in the spirit
of the GPT-2 IMDB task), `review_instruction_prompts` (the SFT model's review instructions) and
`arithmetic_prompts`. `pretraining_corpus` mixes reviews and worked arithmetic into plain text.
`write_jsonl` / `read_jsonl` store any of these lists for `datasets.load_dataset("json", ...)`.

The traps (see also minirl.rewards): a lexicon scorer such as VADER does not know the world's own
food words ("soggy", "bland", "tasty", "crispy"), reads "i hoped the soup would be great, but it was
cold" as positive, and counts repeated words and exclamation marks, which a policy can farm.
`gold_sentiment` is the world's own scorer, which knows all of this; it is the ground truth that
a proxy reward can be measured against.
"""
from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

GENERATOR_VERSION = "1.0"
DEFAULT_SEED = 0

ITEMS = [
    "pasta", "soup", "pizza", "burger", "salad", "curry", "noodles", "steak", "tacos", "sushi",
    "pie", "cake", "bread", "fries", "rice", "stew", "omelet", "pancakes", "coffee", "tea",
    "chicken", "fish", "dumplings", "sandwich",
]
STAFF = ["the waiter", "the staff", "the service", "the owner", "the cook"]
PLACES = ["the cafe", "this place", "the diner", "the bistro", "the kitchen"]

# The world's polarity of every evaluative word, in [-1, 1]. `vader_known` marks which words the
# VADER lexicon also scores (checked in tests/test_world.py); the others are the lexicon gap.
WORD_POLARITY = {
    # positive
    "great": 0.9, "delicious": 1.0, "amazing": 1.0, "perfect": 1.0, "wonderful": 0.9,
    "excellent": 1.0, "lovely": 0.8, "good": 0.6, "fresh": 0.5, "friendly": 0.7, "warm": 0.3,
    "tasty": 0.8, "crispy": 0.5, "tender": 0.6, "juicy": 0.6, "cozy": 0.5, "generous": 0.5,
    "fine": 0.2, "okay": 0.1, "decent": 0.3, "love": 0.9, "loved": 0.9, "recommend": 0.7,
    "worth": 0.5, "enjoyed": 0.8, "clean": 0.4, "quick": 0.3,
    # negative
    "bad": -0.7, "awful": -1.0, "terrible": -1.0, "disgusting": -1.0, "rude": -0.8,
    "dirty": -0.7, "noisy": -0.3, "bland": -0.6, "soggy": -0.7, "stale": -0.7, "greasy": -0.5,
    "cold": -0.5, "slow": -0.4, "overcooked": -0.6, "burnt": -0.7, "salty": -0.4, "dry": -0.4,
    "mediocre": -0.4, "hated": -0.9, "disappointing": -0.8, "waste": -0.8, "overpriced": -0.6,
    "tiny": -0.3,
}
STRONG_POS = ["great", "delicious", "amazing", "perfect", "wonderful", "excellent", "lovely", "tasty"]
MILD_POS = ["good", "fresh", "crispy", "tender", "juicy", "decent", "warm"]
STRONG_NEG = ["awful", "terrible", "disgusting", "burnt", "stale", "soggy", "disappointing"]
MILD_NEG = ["bland", "greasy", "cold", "overcooked", "salty", "dry", "mediocre"]
NEUTRAL_ADJ = ["okay", "fine", "average", "plain", "simple", "ordinary"]
STAFF_POS = ["friendly", "quick", "lovely", "great", "excellent"]
STAFF_NEG = ["rude", "slow", "terrible", "awful"]
PLACE_POS = ["cozy", "clean", "lovely", "warm"]
PLACE_NEG = ["noisy", "dirty", "cold", "tiny"]
PORTION = ["generous", "tiny", "small", "large"]
NEGATORS = ("not", "never", "hardly", "no")
COUNTERFACTUAL = ("hoped", "expected", "wanted", "thought")
SIDES = ["rice", "bread", "a salad", "fries", "a small soup", "some tea"]
DAYS = ["monday", "tuesday", "friday", "saturday", "sunday"]
WHO = ["my friend", "my sister", "we", "my family", "my partner"]

LABELS = ("negative", "neutral", "positive")


def _label(rating: int) -> str:
    return "negative" if rating <= 2 else ("neutral" if rating == 3 else "positive")


def _check_n_seed(n, seed):
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


# ---------------------------------------------------------------- reviews
def _be(item: str) -> tuple[str, str]:
    """("was", "it was") or, for plural dishes, ("were", "they were")."""
    return ("were", "they were") if item.endswith("s") else ("was", "it was")


def _sentence(rng: random.Random, item: str, polarity: int, strong: bool, traps: list) -> str:
    """One sentence about `item` with polarity -1, 0 or +1 (and maybe a trap for a lexicon)."""
    was, it_was = _be(item)
    if polarity > 0:
        adj = rng.choice(STRONG_POS if strong else MILD_POS)
        adj2 = rng.choice([w for w in MILD_POS if w != adj])
        forms = [
            f"the {item} {was} {adj}.",
            f"the {item} {was} {adj} and {adj2}.",
            f"i ordered the {item} and {it_was} {adj}.",
            f"{rng.choice(WHO)} loved the {item}.",
            f"the {item} {was} not {rng.choice(MILD_NEG)} at all, {it_was} {adj}.",
        ]
        s = rng.choice(forms)
        if " not " in s:
            traps.append("negation")
        return s
    if polarity < 0:
        adj = rng.choice(STRONG_NEG if strong else MILD_NEG)
        adj2 = rng.choice([w for w in MILD_NEG if w != adj])
        k = rng.randrange(6)
        if k == 0:
            traps.append("counterfactual")
            return f"i {rng.choice(COUNTERFACTUAL)} the {item} would be {rng.choice(STRONG_POS)}, but {it_was} {adj}."
        if k == 1:
            traps.append("negation")
            return f"the {item} {was} not {rng.choice(['good', 'fresh', 'great', 'tasty'])}."
        return rng.choice([
            f"the {item} {was} {adj}.",
            f"the {item} {was} {adj} and {adj2}.",
            f"i ordered the {item} and {it_was} {adj}.",
            f"{rng.choice(WHO)} hated the {item}.",
        ])
    adj = rng.choice(NEUTRAL_ADJ)
    return rng.choice([
        f"the {item} {was} {adj}.",
        f"the {item} {was} {adj}, nothing special.",
        f"the {item} came with {rng.choice(SIDES)}.",
        f"i ordered the {item} on a {rng.choice(DAYS)}.",
    ])


def _extra(rng: random.Random, polarity: int) -> str:
    """A sentence about the staff, the place, the portion or the verdict."""
    if polarity == 0:
        return rng.choice([
            f"we came on a {rng.choice(DAYS)}.",
            f"the portion was {rng.choice(['small', 'large'])}.",
            f"{rng.choice(PLACES)} was {rng.choice(['busy', 'quiet'])}.",
            "we paid at the counter.",
            f"{rng.choice(STAFF)} was {rng.choice(['okay', 'fine'])}.",
        ])
    pos = polarity > 0
    return rng.choice([
        f"{rng.choice(STAFF)} was {rng.choice(STAFF_POS if pos else STAFF_NEG)}.",
        f"{rng.choice(PLACES)} was {rng.choice(PLACE_POS if pos else PLACE_NEG)}.",
        f"the portion was {'generous' if pos else 'tiny'}.",
        "i would recommend it." if pos else "i would not recommend it.",
        "worth the price." if pos else "a waste of money.",
    ])


# Sentence polarity plans per rating: first the main sentence, then the extras.
_PLANS = {
    5: [(+1, True), (+1, True)],
    4: [(+1, False), (+1, False), (-1, False)],
    3: [(0, False), (0, False), (+1, False), (-1, False)],
    2: [(-1, False), (-1, False), (+1, False)],
    1: [(-1, True), (-1, True)],
}


def _review(rng: random.Random) -> dict:
    item = rng.choice(ITEMS)
    rating = rng.randint(1, 5)
    traps: list = []
    main_pol, strong = _PLANS[rating][0]
    if rating == 3:
        main_pol = 0
    sentences = [_sentence(rng, item, main_pol, strong, traps)]
    n_extra = rng.choice([0, 1, 1, 2, 2, 3, 4])
    for _ in range(n_extra):
        pol, _ = rng.choice(_PLANS[rating])
        if rating in (1, 5):
            pol = main_pol if rng.random() < 0.8 else 0
        for _try in range(5):  # no sentence twice in one review
            if rng.random() < 0.5:
                s = _sentence(rng, item, pol, strong and pol != 0, traps)
            else:
                s = _extra(rng, pol)
            if s not in sentences:
                sentences.append(s)
                break
    if rating in (2, 4) and rng.random() < 0.5:
        s = _sentence(rng, item, +1 if rating == 4 else -1, True, traps)
        if s not in sentences:
            sentences.append(s)
    text = " ".join(sentences)
    words = text.split()
    k = min(len(words) - 1, rng.choice([2, 3, 3, 4, 5]))
    prompt = " ".join(words[:k])
    return {
        "prompt": prompt,
        "response": " " + " ".join(words[k:]),
        "text": text,
        "item": item,
        "rating": rating,
        "label": _label(rating),
        "traps": sorted(set(traps)),
        "n_words": len(words),
    }


def reviews(n: int, seed: int = DEFAULT_SEED) -> list[dict]:
    """`n` one-line reviews, rating uniform on 1..5. Keys: prompt, response (starts with a space;
    prompt + response == text), text, item, rating, label, traps, n_words.

    The label follows the rating (1-2 negative, 3 neutral, 4-5 positive); `gold_sentiment(text)`
    agrees with it in sign (tests/test_world.py).
    """
    _check_n_seed(n, seed)
    rng = random.Random(f"reviews-{GENERATOR_VERSION}-{seed}")
    out = []
    while len(out) < n:
        r = _review(rng)
        g = gold_sentiment(r["text"])
        # keep only reviews whose text carries the rating's sign (mixed 4s and 2s can cancel out)
        if (r["rating"] > 3 and g > 0.2) or (r["rating"] < 3 and g < -0.2) or (r["rating"] == 3 and abs(g) < 0.5):
            out.append(r)
    return out


# ---------------------------------------------------------------- gold sentiment
_WORD_RE = re.compile(r"[a-z']+")


def gold_sentiment(text: str) -> float:
    """The world's own sentiment of `text`, in [-1, 1] (tanh of a sum of word polarities).

    Rules (all within a clause, clauses split at . , ; ! ? and 'but'):
    - a polar word preceded within 3 words by a negator (not, never, hardly, no) counts with its
      sign flipped and its size multiplied by 0.7 ("not bad" is mildly positive);
    - a clause that contains an expectation word (hoped, expected, wanted, thought) counts nothing:
      "i hoped it would be great, but it was cold" is negative;
    - each distinct (word, negated) pair counts ONCE, and punctuation adds nothing: repeating
      "great!!!" does not raise the score (unlike VADER, which the rewards module exposes as
      a hackable proxy).
    Unknown words count 0. Works on any text, including a model's samples.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    seen = {}
    clauses = re.split(r"[.,;!?]|\bbut\b", text.lower())
    for clause in clauses:
        words = _WORD_RE.findall(clause)
        if any(w in COUNTERFACTUAL for w in words):
            continue
        for i, w in enumerate(words):
            p = WORD_POLARITY.get(w)
            if p is None:
                continue
            neg = any(v in NEGATORS for v in words[max(0, i - 3):i])
            seen[(w, neg)] = -0.7 * p if neg else p
    return math.tanh(sum(seen.values()))


# ---------------------------------------------------------------- arithmetic
def _problem(rng: random.Random, level: int) -> dict:
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        expr, steps = f"{a}+{b}", [(f"{a}+{b}", a + b)]
    elif level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            expr, steps = f"{a}+{b}", [(f"{a}+{b}", a + b)]
        else:
            a, b = max(a, b), min(a, b)
            expr, steps = f"{a}-{b}", [(f"{a}-{b}", a - b)]
    elif level == 3:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        expr, steps = f"{a}*{b}", [(f"{a}*{b}", a * b)]
    elif level == 4:
        a, b, c = rng.randint(10, 60), rng.randint(1, 39), rng.randint(1, 49)
        s = a + b
        if rng.random() < 0.5 and c <= s:
            expr, steps = f"{a}+{b}-{c}", [(f"{a}+{b}", s), (f"{s}-{c}", s - c)]
        else:
            expr, steps = f"{a}+{b}+{c}", [(f"{a}+{b}", s), (f"{s}+{c}", s + c)]
    elif level == 5:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 30)
        expr, steps = f"{a}*{b}+{c}", [(f"{a}*{b}", a * b), (f"{a * b}+{c}", a * b + c)]
    else:
        raise ValueError(f"level must be in 1..5, got {level}")
    answer = steps[-1][1]
    work = " ".join(f"{lhs}={val}." for lhs, val in steps)
    return {
        "prompt": f"Q: {expr}=?",
        "response": f" {work} A: {answer}",
        "answer": answer,
        "steps": [f"{lhs}={val}" for lhs, val in steps],
        "level": level,
    }


def arithmetic_problems(n: int, seed: int = DEFAULT_SEED, levels=(1, 2, 3, 4, 5)) -> list[dict]:
    """`n` problems with worked, exactly checkable answers, level drawn uniformly from `levels`.

    prompt "Q: 12+7-5=?", response " 12+7=19. 19-5=14. A: 14" (each step "lhs=value." then
    "A: answer"), answer (int), steps (list of "lhs=value" strings), level.
    """
    _check_n_seed(n, seed)
    levels = tuple(levels)
    if not levels or any(lv not in (1, 2, 3, 4, 5) for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of 1..5, got {levels}")
    rng = random.Random(f"arith-{GENERATOR_VERSION}-{seed}")
    return [_problem(rng, rng.choice(levels)) for _ in range(n)]


# ---------------------------------------------------------------- instructions
def instruction_pairs(n: int, seed: int = DEFAULT_SEED, arithmetic_fraction: float = 0.3) -> list[dict]:
    """SFT pairs: prompt (an instruction ending in ':' or '=?'), response (starting with a space).

    Review instructions come in three kinds, in equal shares: "write a positive review of the X:"
    (rating 4-5), "write a negative review of the X:" (rating 1-2), and "write a review of the X:"
    whose response is a review of ANY rating. Keys: prompt, response, kind ("positive",
    "negative", "any", "arithmetic"), and the review's rating/label/item or the problem's answer.
    """
    _check_n_seed(n, seed)
    if not 0.0 <= arithmetic_fraction <= 1.0:
        raise ValueError(f"arithmetic_fraction must be in [0, 1], got {arithmetic_fraction}")
    rng = random.Random(f"instruct-{GENERATOR_VERSION}-{seed}")
    n_arith = round(n * arithmetic_fraction)
    pool = reviews(3 * (n - n_arith) + 30, seed=seed + 7919)
    by_label = {lab: [r for r in pool if r["label"] == lab] for lab in LABELS}
    problems = arithmetic_problems(n_arith, seed=seed + 7919)
    kinds = ["arithmetic"] * n_arith + [("positive", "negative", "any")[i % 3] for i in range(n - n_arith)]
    rng.shuffle(kinds)
    out, counters = [], {lab: 0 for lab in LABELS}
    pi = 0
    for kind in kinds:
        if kind == "arithmetic":
            p = problems[pi]
            pi += 1
            out.append({"prompt": p["prompt"], "response": p["response"], "kind": kind, "answer": p["answer"]})
            continue
        lab = kind if kind != "any" else rng.choice(LABELS)
        r = by_label[lab][counters[lab] % len(by_label[lab])]
        counters[lab] += 1
        head = "write a review of the" if kind == "any" else f"write a {kind} review of the"
        out.append({
            "prompt": f"{head} {r['item']}:", "response": " " + r["text"], "kind": kind,
            "item": r["item"], "rating": r["rating"], "label": r["label"],
        })
    return out


def pretraining_corpus(n_reviews: int, n_arithmetic: int, seed: int = DEFAULT_SEED) -> list[str]:
    """Plain-text documents for pretraining: `n_reviews` reviews and `n_arithmetic` worked
    problems ("Q: 3+4=? 3+4=7. A: 7"), shuffled together. One document per string, no EOS (the
    tokenizer's caller appends it)."""
    _check_n_seed(n_reviews, seed)
    _check_n_seed(n_arithmetic, seed)
    docs = [r["text"] for r in reviews(n_reviews, seed)]
    docs += [p["prompt"] + p["response"] for p in arithmetic_problems(n_arithmetic, seed)]
    random.Random(f"corpus-{GENERATOR_VERSION}-{seed}").shuffle(docs)
    return docs


# ---------------------------------------------------------------- prompt sets for RL
def sentiment_prompts(n: int, seed: int = 1) -> list[dict]:
    """Prompts for sentiment control (continue a review): the first 2-5 words of fresh reviews.

    Keys: prompt, item, and prefix_sentiment (gold_sentiment of the prompt alone: prompts that
    already read negative, e.g. "the soup was cold and", are harder to turn positive).
    Seed 1 by default so that prompts are not the first training reviews (seed 0).
    """
    out = []
    for r in reviews(n, seed=seed + 1000):
        out.append({"prompt": r["prompt"], "item": r["item"], "prefix_sentiment": gold_sentiment(r["prompt"])})
    return out


def review_instruction_prompts(n: int, seed: int = 1, kind: str = "any") -> list[dict]:
    """Review instructions for the SFT model: "write a review of the X:" (kind "any"), or
    "write a positive/negative review of the X:". Keys: prompt, item, kind."""
    if kind not in ("any", "positive", "negative"):
        raise ValueError(f"kind must be 'any', 'positive' or 'negative', got {kind!r}")
    _check_n_seed(n, seed)
    rng = random.Random(f"review-prompts-{GENERATOR_VERSION}-{seed}")
    head = "write a review of the" if kind == "any" else f"write a {kind} review of the"
    out = []
    for _ in range(n):
        item = rng.choice(ITEMS)
        out.append({"prompt": f"{head} {item}:", "item": item, "kind": kind})
    return out


def arithmetic_prompts(n: int, seed: int = 1, levels=(1, 2, 3, 4, 5)) -> list[dict]:
    """Arithmetic problems for RL with verifiable rewards (same keys as `arithmetic_problems`;
    seed 1 by default, i.e. problems drawn apart from the default training set)."""
    return arithmetic_problems(n, seed=seed + 1000, levels=levels)


# ---------------------------------------------------------------- files
def write_jsonl(rows: list[dict], path) -> Path:
    """Write `rows` (dicts of JSON-able values) one JSON object per line; return the path.
    Load back with `read_jsonl(path)` or `datasets.load_dataset("json", data_files=str(path))`."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be a list of dicts")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return path


def read_jsonl(path) -> list[dict]:
    """Read a file written by `write_jsonl`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
