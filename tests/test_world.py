"""The tiny world (minirl.world) and its tokenizer (minirl.tokenizer)."""
import math
import re

import pytest
import torch

from minirl import tokenizer as T
from minirl import world


def test_generators_are_deterministic_and_seeded():
    assert world.GENERATOR_VERSION == "1.0"
    for fn in (world.reviews, world.arithmetic_problems, world.instruction_pairs):
        assert fn(50, seed=3) == fn(50, seed=3)
        assert fn(50, seed=3) != fn(50, seed=4)
    assert world.pretraining_corpus(40, 10, seed=2) == world.pretraining_corpus(40, 10, seed=2)


def test_reviews_fields_labels_and_variety():
    rows = world.reviews(2000)
    for r in rows:
        assert r["prompt"] + r["response"] == r["text"] and r["response"].startswith(" ")
        assert r["label"] == {1: "negative", 2: "negative", 3: "neutral", 4: "positive", 5: "positive"}[r["rating"]]
        g = world.gold_sentiment(r["text"])
        assert (g > 0.2) if r["rating"] > 3 else (g < -0.2) if r["rating"] < 3 else abs(g) < 0.5
    n_words = [r["n_words"] for r in rows]
    assert min(n_words) <= 5 and max(n_words) >= 40  # varied lengths
    traps = {t for r in rows for t in r["traps"]}
    assert traps == {"negation", "counterfactual"}
    assert {r["rating"] for r in rows} == {1, 2, 3, 4, 5}
    # no dish takes "was" in the plural
    assert not any(re.search(r"\b(noodles|tacos|fries|dumplings|pancakes) was\b", r["text"]) for r in rows)


def test_gold_sentiment_rules():
    g = world.gold_sentiment
    assert g("the pasta was good.") > 0 > g("the pasta was not good.")
    assert g("the pasta was not bad.") > 0  # negated negative: mildly positive
    assert g("i hoped the soup would be great, but it was cold.") < 0  # counterfactual clause ignored
    assert g("the soup was great great great!!!") == g("the soup was great.")  # no farming
    assert g("the quick brown fox") == pytest.approx(math.tanh(0.3))  # one known word, "quick" = 0.3
    assert g("zzz qqq") == 0.0
    assert -1 <= g(" ".join(world.STRONG_POS * 3)) <= 1
    with pytest.raises(ValueError, match="str"):
        g(3)


def test_vader_traps_exist():
    """The lexicon proxy (VADER) misreads the world in the documented ways."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    v = SentimentIntensityAnalyzer()
    unknown = [w for w in world.WORD_POLARITY if w not in v.lexicon]
    assert {"soggy", "bland", "tasty", "crispy"} <= set(unknown)
    cf = "i hoped the soup would be great, but it was soggy."
    assert v.polarity_scores(cf)["compound"] > 0 > world.gold_sentiment(cf)
    base, farmed = "the soup was great.", "the soup was great great great!!!"
    assert v.polarity_scores(farmed)["compound"] > v.polarity_scores(base)["compound"]


def test_arithmetic_answers_are_exact():
    rows = world.arithmetic_problems(500, seed=1)
    assert {r["level"] for r in rows} == {1, 2, 3, 4, 5}
    for r in rows:
        expr = re.fullmatch(r"Q: ([0-9+\-*]+)=\?", r["prompt"]).group(1)
        assert eval(expr) == r["answer"]  # the generator's own expressions, digits and + - * only
        assert r["response"].endswith(f"A: {r['answer']}")
        for step in r["steps"]:
            lhs, val = step.split("=")
            assert eval(lhs) == int(val)
        assert r["answer"] >= 0
    with pytest.raises(ValueError, match="levels"):
        world.arithmetic_problems(3, levels=(6,))


def test_instruction_pairs_mix():
    rows = world.instruction_pairs(900, seed=0)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("arithmetic") == 270
    assert all(r["rating"] >= 4 for r in rows if r["kind"] == "positive")
    assert all(r["rating"] <= 2 for r in rows if r["kind"] == "negative")
    any_labels = {r["label"] for r in rows if r["kind"] == "any"}
    assert any_labels == {"negative", "neutral", "positive"}  # SFT data holds good AND bad reviews
    assert all(r["prompt"].endswith(":") or r["prompt"].endswith("=?") for r in rows)


def test_prompt_sets():
    sp = world.sentiment_prompts(20)
    assert len(sp) == 20 and all(1 < len(p["prompt"].split()) <= 5 for p in sp)
    train = {r["prompt"] for r in world.arithmetic_problems(200)}
    held = world.arithmetic_prompts(200)
    assert sum(p["prompt"] in train for p in held) < 100  # drawn apart (small problems can repeat)
    ip = world.review_instruction_prompts(5, kind="positive")
    assert all(p["prompt"].startswith("write a positive review of the ") for p in ip)
    with pytest.raises(ValueError, match="kind"):
        world.review_instruction_prompts(5, kind="happy")
    with pytest.raises(ValueError, match="non-negative"):
        world.reviews(-1)


def test_jsonl_roundtrip_and_datasets(tmp_path):
    rows = world.instruction_pairs(30)
    path = world.write_jsonl(rows, tmp_path / "sft.jsonl")
    assert world.read_jsonl(path) == [dict(sorted(r.items())) for r in rows]
    import datasets

    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 30 and ds[0]["prompt"] == rows[0]["prompt"]



def test_shipped_tokenizer_is_the_built_one(tok):
    fresh = T.build_tokenizer()
    assert fresh.get_vocab() == tok.get_vocab()
    assert tok.eos_token == T.EOS_TOKEN and tok.pad_token == T.PAD_TOKEN
    assert tok.eos_token_id != tok.pad_token_id  # distinct PAD
    assert len(tok) <= T.VOCAB_SIZE


def test_tokenizer_roundtrip_and_digits(tok):
    for text in ["the pasta was soggy. i would not recommend it!", "Q: 42+3-26=? 42+3=45. 45-26=19. A: 19"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    ids = tok("12345", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == list("12345")


def test_encoders(tok):
    batch = T.encode_prompt_response(tok, ["Q: 1+2=?", "write a review of the soup:"], [" 1+2=3. A: 3", " the soup was cold."])
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert ids.shape == am.shape == rm.shape
    assert bool((rm <= am).all())
    for i, resp in enumerate([" 1+2=3. A: 3", " the soup was cold."]):
        got = ids[i][rm[i].bool()].tolist()
        assert got[-1] == tok.eos_token_id and tok.decode(got[:-1]) == resp
    assert bool((ids[am == 0] == tok.pad_token_id).all())
    left_ids, left_am = T.encode_prompts(tok, ["the soup", "i ordered the pasta and"])
    assert left_am[:, -1].tolist() == [1, 1] and left_am[0, 0] == 0
    doc_ids, doc_am = T.encode_documents(tok, ["the soup was hot.", "ok"], max_len=4)
    assert doc_ids.shape == (2, 4) and doc_am[0].sum() == 4  # cut at max_len, start kept
    assert doc_ids[1][doc_am[1].bool()][-1] == tok.eos_token_id  # short document ends in EOS
    with pytest.raises(ValueError, match="equal length"):
        T.encode_prompt_response(tok, ["a"], [])
    with pytest.raises(ValueError, match="padding_side"):
        T.encode_prompts(tok, ["a"], padding_side="middle")


def test_missing_special_tokens_raise(tok):
    import copy

    t = copy.deepcopy(tok)
    t.pad_token = None
    with pytest.raises(ValueError, match="PAD"):
        T.check_special_tokens(t)
