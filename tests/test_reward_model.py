"""Reward models (minirl.reward_model): pairs, label noise, metrics, training, scoring, best-of-n,
and the shipped data/tiny-rm checkpoint."""
import itertools
import json
import math

import pytest
import torch

from minirl import reward_model as R
from minirl import world
from minirl.models import ScalarHeadModel, last_token_scores, tiny_gpt2
from minirl.paths import DATA_DIR
from minirl.tokenizer import encode_prompt_response, load_tokenizer

TINY_RM_DIR = DATA_DIR / R.TINY_RM_NAME



@pytest.fixture(scope="module")
def small_rm(tok):
    return ScalarHeadModel.from_causal_lm(tiny_gpt2(tok, seed=0, n_layer=1, n_embd=32, n_head=2), seed=0)


def _review_groups(n_prompts, k, seed=3):
    revs = world.reviews(n_prompts * k, seed=seed)
    prompts = [f"write a review of the {r['item']}:" for r in revs[::k]]
    return prompts, [[r["response"] for r in revs[i * k:(i + 1) * k]] for i in range(n_prompts)]


# ---------------------------------------------------------------- pairs and noise


def test_noiseless_pairs_follow_gold_and_count_is_c_k_2():
    prompts, resp = _review_groups(5, 4)
    rows = R.preference_pairs(prompts, resp, drop_ties=False)
    assert len(rows) == 5 * math.comb(4, 2)
    for r in rows:
        assert r["gold_chosen"] >= r["gold_rejected"]
        assert r["gold_chosen"] == world.gold_sentiment(r["chosen"])
        assert {"prompt", "chosen", "rejected"} <= set(r)
    # every unordered pair of a prompt's responses appears exactly once
    for i in range(5):
        seen = {frozenset((r["chosen"], r["rejected"])) for r in rows if r["prompt_index"] == i}
        assert seen == {frozenset(p) for p in itertools.combinations(resp[i], 2)}


def test_ties_are_dropped():
    prompts = ["write a review of the soup:"]
    resp = [[" the soup was great.", " the soup was great.", " the soup was cold."]]
    assert len(R.preference_pairs(prompts, resp, drop_ties=False)) == 3
    rows = R.preference_pairs(prompts, resp)
    assert len(rows) == 2 and all(r["rejected"] == " the soup was cold." for r in rows)


def test_gumbel_labeler_is_bradley_terry():
    # three items, many rankings: each pair's frequency matches sigma((s_i - s_j) / temperature)
    s = torch.tensor([[0.4, 0.1, -0.3]], dtype=torch.float64).repeat(40000, 1)
    tau = 0.25
    ranks = R.noisy_ranking(s, tau, torch.Generator().manual_seed(0))
    pos = torch.argsort(ranks, dim=1)  # position of each item in its ranking
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        freq = (pos[:, i] < pos[:, j]).double().mean()
        expected = torch.sigmoid((s[0, i] - s[0, j]) / tau)
        assert abs(freq - expected) < 4 * math.sqrt(expected * (1 - expected) / 40000), (i, j, freq, expected)
    assert torch.equal(R.noisy_ranking(s[:2], 0.0), torch.tensor([[0, 1, 2], [0, 1, 2]]))


def test_flip_rate_is_the_fraction_of_labels_against_gold():
    prompts, resp = _review_groups(300, 4, seed=5)
    rows = R.preference_pairs(prompts, resp, flip_rate=0.2, generator=torch.Generator().manual_seed(1))
    wrong = sum(r["gold_chosen"] < r["gold_rejected"] for r in rows) / len(rows)
    assert abs(wrong - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(rows))
    with pytest.raises(ValueError, match="flip_rate"):
        R.preference_pairs(prompts, resp, flip_rate=0.7)
    with pytest.raises(ValueError, match="same number"):
        R.preference_pairs(prompts[:2], [resp[0], resp[1][:3]])


def test_pairs_roundtrip_through_jsonl_and_datasets(tmp_path):
    prompts, resp = _review_groups(3, 3)
    rows = R.preference_pairs(prompts, resp)
    path = R.save_pairs(rows, tmp_path / "pairs.jsonl")
    ds = R.load_pairs(path)
    assert ds.to_list() == [dict(sorted(r.items())) for r in rows]
    assert set(ds.column_names) >= {"prompt", "chosen", "rejected"}
    with pytest.raises(ValueError):
        R.save_pairs([{"prompt": "x"}], tmp_path / "bad.jsonl")


# ---------------------------------------------------------------- metrics


def test_pairwise_accuracy_counts_ties_as_half():
    c, r = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 4.0])
    assert R.pairwise_accuracy(c, r) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError):
        R.pairwise_accuracy(c, r[:3])


def test_calibration_bins_hand_example_and_perfect_calibration():
    p = torch.tensor([0.05, 0.05, 0.95, 0.95, 0.55], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 1, 1])
    cal = R.calibration_bins(p, y, n_bins=10)
    assert cal["count"].tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert cal["frequency"][0] == 0.5 and cal["frequency"][9] == 1.0 and math.isnan(cal["frequency"][1])
    assert cal["ece"] == pytest.approx((2 * 0.45 + 1 * 0.45 + 2 * 0.05) / 5)
    # outcomes drawn with the predicted probabilities: ECE near 0; with squashed ones: not
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200000, generator=g, dtype=torch.float64)
    outcome = torch.rand(200000, generator=g, dtype=torch.float64) < probs
    assert R.calibration_bins(probs, outcome)["ece"] < 0.01
    assert R.calibration_bins(0.5 + 0.5 * (probs - 0.5), outcome)["ece"] > 0.1
    with pytest.raises(ValueError, match="lie in"):
        R.calibration_bins(p + 1, y)


def test_pair_calibration_of_a_true_bradley_terry_model():
    # labels drawn from sigma(r_a - r_b): the true rewards are calibrated, doubled ones are overconfident
    g = torch.Generator().manual_seed(0)
    ra, rb = torch.randn(100000, generator=g, dtype=torch.float64), torch.randn(100000, generator=g, dtype=torch.float64)
    a_wins = torch.rand(100000, generator=g, dtype=torch.float64) < torch.sigmoid(ra - rb)
    rc, rr = torch.where(a_wins, ra, rb), torch.where(a_wins, rb, ra)
    assert R.pair_calibration(rc, rr)["ece"] < 0.01
    assert R.pair_calibration(2 * rc, 2 * rr)["ece"] > 0.05
    assert R.pair_calibration(rc + 3.0, rr + 3.0)["ece"] == pytest.approx(R.pair_calibration(rc, rr)["ece"])  # shift-invariant


def test_correlations():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert R.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert R.spearman(x, x ** 3) == pytest.approx(1.0)
    assert R.spearman(x, -torch.exp(x)) == pytest.approx(-1.0)
    assert R.spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 1.0])) == pytest.approx(1.0)  # ties
    with pytest.raises(ValueError, match="constant"):
        R.pearson(x, torch.ones(4))


# ---------------------------------------------------------------- scoring and training


def test_last_token_scores_through_the_pipeline_under_both_paddings(tok, small_rm):
    prompts = ["write a review of the soup:"] * 3
    responses = [" great.", " the soup was cold and the staff was rude.", " fine."]
    right = R.score_texts(small_rm, tok, prompts, responses, padding_side="right")
    left = R.score_texts(small_rm, tok, prompts, responses, padding_side="left")
    alone = torch.stack([R.score_texts(small_rm, tok, [p], [y])[0] for p, y in zip(prompts, responses)])
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    # the silent bug: reading column T-1 of a right-padded batch gives the pad position (0) for short rows
    enc = encode_prompt_response(tok, prompts, responses, padding_side="right")
    values = small_rm(enc["input_ids"], enc["attention_mask"])
    assert values[0, -1] == 0 and values[2, -1] == 0 and values[1, -1] != 0
    torch.testing.assert_close(last_token_scores(values, enc["attention_mask"]), right)


def test_training_reduces_the_loss_on_a_toy(tok):
    prompts, resp = _review_groups(24, 4, seed=11)
    rows = R.preference_pairs(prompts, resp)
    rm = ScalarHeadModel.from_causal_lm(tiny_gpt2(tok, seed=1, n_layer=1, n_embd=32, n_head=2), seed=0)
    before = R.evaluate_reward_model(rm, tok, rows)
    cfg = R.RewardModelConfig(lr=3e-3, epochs=6, batch_size=32, log_every=1)
    hist = R.train_reward_model(rm, tok, rows, cfg)
    after = R.evaluate_reward_model(rm, tok, rows)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert after["accuracy"] > 0.85 > before["accuracy"] + 0.2
    assert after["label_gold_agreement"] == 1.0 and after["gold_accuracy"] == after["accuracy"]


def test_sample_responses_shapes_and_seed(tok):
    pol = tiny_gpt2(tok, seed=0, n_layer=1, n_embd=32, n_head=2)
    prompts = ["write a review of the soup:", "write a review of the pie:"]
    a, b = (R.sample_responses(pol, tok, prompts, 3, max_new_tokens=6, generator=torch.Generator().manual_seed(0),
                               batch_size=4) for _ in range(2))
    assert a == b and len(a) == 2 and all(len(x) == 3 and all(isinstance(y, str) for y in x) for x in a)


def test_sample_responses_marks_truncated_responses(tok):
    from minirl.lm import generate
    from minirl.models import TINY_SFT_DIR, load_policy
    from minirl.tokenizer import encode_prompts
    pol = load_policy(TINY_SFT_DIR)[0]  # ends its reviews with EOS after about 20 tokens
    prompts = ["write a review of the soup:", "write a review of the pie:"] * 4
    kw = dict(max_new_tokens=20, batch_size=8)
    plain = R.sample_responses(pol, tok, prompts, 2, generator=torch.Generator().manual_seed(0), **kw)
    texts, cut = R.sample_responses(pol, tok, prompts, 2, return_truncated=True,
                                    generator=torch.Generator().manual_seed(0), **kw)
    assert texts == plain and [len(c) for c in cut] == [2] * len(prompts)
    flags = [c for cs in cut for c in cs]
    assert 0 < sum(flags) < len(flags)  # the test sees both kinds
    # truncated means: the same draws, re-generated, have no EOS in their max_new_tokens columns
    flat, g, rows = [p for p in prompts for _ in range(2)], torch.Generator().manual_seed(0), []
    for s in range(0, len(flat), 8):
        ids, mask = encode_prompts(tok, flat[s:s + 8])
        out = generate(pol, ids, mask, 20, tok.eos_token_id, tok.pad_token_id, generator=g)
        rows += [not bool(((r == tok.eos_token_id) & (m > 0)).any()) for r, m in zip(out.response_ids, out.response_mask)]
    assert flags == rows


# ---------------------------------------------------------------- best-of-n


def test_best_of_n_expectation_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    proxy, gold = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        brute = torch.stack([torch.stack([gold[p, list(s)][proxy[p, list(s)].argmax()] for s in subsets]).mean()
                             for p in range(3)])
        torch.testing.assert_close(R.best_of_n_expectation(proxy, gold, n), brute)
    torch.testing.assert_close(R.best_of_n_expectation(proxy, gold, 1), gold.mean(1))
    torch.testing.assert_close(R.best_of_n_expectation(proxy, proxy, 7), proxy.max(1).values)
    with pytest.raises(ValueError):
        R.best_of_n_expectation(proxy, gold, 8)


def test_best_of_n_kl_formula():
    assert R.best_of_n_kl(1) == 0.0
    assert R.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    # exact for distinct outcomes: best-of-n of a uniform over M items has P(rank i) = (i^n - (i-1)^n) / M^n
    M, n = 2000, 8
    i = torch.arange(1, M + 1, dtype=torch.float64)
    p = (i / M) ** n - ((i - 1) / M) ** n
    kl = float((p * torch.log(p * M)).sum())
    assert kl == pytest.approx(R.best_of_n_kl(n), abs=5e-3) and kl < R.best_of_n_kl(n)


# ---------------------------------------------------------------- the shipped reward model


@pytest.mark.skipif(not (TINY_RM_DIR / "reference_scores.json").exists(), reason="data/tiny-rm not built yet (notebooks/05)")
def test_shipped_reward_model_loads_offline_and_reproduces_scores(tok, float64_default):
    rm = ScalarHeadModel.from_pretrained(TINY_RM_DIR)
    assert all(p.dtype == torch.float64 for p in rm.parameters())
    shipped_tok = load_tokenizer(TINY_RM_DIR)
    assert shipped_tok.get_vocab() == tok.get_vocab()
    ref = json.loads((TINY_RM_DIR / "reference_scores.json").read_text())
    scores = R.score_texts(rm, shipped_tok, [r["prompt"] for r in ref["rows"]], [r["response"] for r in ref["rows"]])
    torch.testing.assert_close(scores.double(), torch.tensor([r["score"] for r in ref["rows"]], dtype=torch.float64),
                               atol=1e-6, rtol=0)  # the card rounds to 6 decimals
    # the RM prefers the gold's order on the reference rows it was saved with
    gold = torch.tensor([world.gold_sentiment(r["response"]) for r in ref["rows"]], dtype=torch.float64)
    assert R.spearman(scores, gold) > 0.5


def test_outcome_model_learns_right_from_wrong(tok, float64_default):
    # the ORM's loss is the binary cross-entropy of sigma(r) against the right/wrong label: on a
    # toy task where "right" is visible in the text it reaches perfect training accuracy
    torch.manual_seed(0)
    rm = ScalarHeadModel.from_causal_lm(tiny_gpt2(tok, seed=0, n_layer=1, n_embd=32, n_head=2))
    prompts = [f"Q: {a}+{b}=?" for a in range(4) for b in range(4)]
    responses = [f" {a}+{b}={a + b + (i % 2)}. A: {a + b + (i % 2)}"
                 for i, (a, b) in enumerate((a, b) for a in range(4) for b in range(4))]
    labels = [1.0 - (i % 2) for i in range(len(prompts))]  # every second answer is off by one
    prompts, responses, labels = prompts * 4, responses * 4, labels * 4
    cfg = R.RewardModelConfig(lr=3e-3, epochs=30, batch_size=16, log_every=4)
    hist = R.train_outcome_model(rm, tok, prompts, responses, labels, cfg)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"] and not rm.training
    p = torch.sigmoid(R.score_texts(rm, tok, prompts, responses))
    # the loss it minimized is the mean binary cross-entropy of these probabilities
    y = torch.tensor(labels)
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert float(bce) < hist[0]["loss"]
    assert float(((p > 0.5).double() == y).double().mean()) > 0.9


def test_outcome_model_rejects_bad_input(tok):
    rm = ScalarHeadModel.from_causal_lm(tiny_gpt2(tok, seed=0, n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(ValueError, match="one label per prompt"):
        R.train_outcome_model(rm, tok, ["Q: 1+1=?"], [" 2"], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        R.train_outcome_model(rm, tok, ["Q: 1+1=?"], [" 2"], [2.0])
    with pytest.raises(ValueError, match="list of str"):
        R.train_outcome_model(rm, tok, "Q: 1+1=?", [" 2"], [1.0])


def test_outcome_probabilities_and_scorer(tok, float64_default):
    # P(right) = sigma(score_texts); the scorer gives the same numbers on a Samples object; any
    # response (empty, huge number) gets a defined value in [0, 1]
    from minirl.rollout import Samples

    rm = ScalarHeadModel.from_causal_lm(tiny_gpt2(tok, seed=0, n_layer=1, n_embd=32, n_head=2), seed=1)
    prompts = ["Q: 6*7+5=?", "Q: 6*7+5=?", "Q: 3+4=?", "Q: 3+4=?"]
    responses = [" 6*7=42. 42+5=47. A: 47", "", " 3+4=7. A: " + "9" * 60, " A: 7"]
    p = R.outcome_probabilities(rm, tok, prompts, responses)
    assert p.shape == (4,) and bool(((p >= 0) & (p <= 1)).all()) and bool(torch.isfinite(p).all())
    torch.testing.assert_close(p, torch.sigmoid(R.score_texts(rm, tok, prompts, responses)))
    # batch size does not change the numbers
    torch.testing.assert_close(R.outcome_probabilities(rm, tok, prompts, responses, batch_size=1), p)
    samples = Samples(prompts=prompts, responses=responses, generation=None,
                      has_eos=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(R.outcome_scorer(rm, tok)(samples), p)
    rm.train()  # the mode is left as it was
    torch.testing.assert_close(R.outcome_probabilities(rm, tok, prompts, responses), p)
    assert rm.training


def test_outcome_probabilities_rejects_bad_input(tok):
    rm = ScalarHeadModel.from_causal_lm(tiny_gpt2(tok, seed=0, n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(ValueError, match="one response per prompt"):
        R.outcome_probabilities(rm, tok, ["Q: 1+1=?", "Q: 2+2=?"], [" 2"])
    with pytest.raises(ValueError, match="list of str"):
        R.outcome_probabilities(rm, tok, "Q: 1+1=?", [" 2"])
    with pytest.raises(ValueError, match="non-empty"):
        R.outcome_probabilities(rm, tok, [], [])


def test_right_over_wrong_pooled_within_ties_and_errors():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.3, 0.2, 0.4]], dtype=torch.float64)
    correct = torch.tensor([[1, 0, 0], [1, 0, 0]])
    # pooled: rights 0.9, 0.3 against wrongs 0.8, 0.1, 0.2, 0.4 -> 4 + 2 wins of 8 pairs
    assert R.right_over_wrong(scores, correct) == 6 / 8
    # within a problem: row 0 wins 2 of 2, row 1 wins 1 of 2
    assert R.right_over_wrong(scores, correct, within=True) == 3 / 4
    # by brute force over the pairs, and a score that only knows the row sits at 1/2 within
    r, w = scores[correct == 1], scores[correct == 0]
    assert R.right_over_wrong(scores, correct) == (r[:, None] > w[None, :]).double().mean().item()
    by_row = torch.tensor([[0.7] * 3, [0.2] * 3], dtype=torch.float64)
    assert R.right_over_wrong(by_row, correct, within=True) == 0.5
    assert R.right_over_wrong(by_row, correct) == 0.5  # 2 wins, 2 losses, 4 ties of 8
    # a row with no wrong answer adds no pair
    assert R.right_over_wrong(scores, torch.tensor([[1, 1, 1], [1, 0, 0]]), within=True) == 0.5
    with pytest.raises(ValueError, match="at least one right and one wrong"):
        R.right_over_wrong(scores, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="same problem"):
        R.right_over_wrong(scores, torch.tensor([[1, 1, 1], [0, 0, 0]]), within=True)
    with pytest.raises(ValueError, match="0/1"):
        R.right_over_wrong(scores, torch.full((2, 3), 2))
    with pytest.raises(ValueError, match="one shape"):
        R.right_over_wrong(scores, correct[:, :2])


def test_score_texts_rejects_a_bare_string(tok):
    rm = ScalarHeadModel.from_causal_lm(tiny_gpt2(tok, seed=0, n_layer=1, n_embd=32, n_head=2), seed=0)
    with pytest.raises(ValueError, match="non-empty list of str"):
        R.score_texts(rm, tok, "write a review:", [" good."])
    with pytest.raises(ValueError, match="single str"):
        R.score_texts(rm, tok, ["write a review:"], " good.")
