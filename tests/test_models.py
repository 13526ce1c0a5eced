"""minirl.models (tiny GPT-2, load_policy, scalar heads) and minirl.rewards."""
import os
import time

import pytest
import torch

from minirl import models, rewards
from minirl import tokenizer as T



@pytest.fixture(scope="module")
def tiny(tok):
    return models.tiny_gpt2(tok, seed=0)


def test_tiny_config_and_seeded_init(tok, tiny):
    cfg = tiny.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_positions, cfg.vocab_size) == (2, 96, 128, len(tok))
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    assert cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    n = sum(p.numel() for p in tiny.parameters())
    assert 250_000 < n < 350_000
    again = models.tiny_gpt2(tok, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tiny.parameters(), again.parameters()))
    other = models.tiny_gpt2(tok, seed=1)
    assert not torch.equal(tiny.transformer.wte.weight, other.transformer.wte.weight)
    with pytest.raises(ValueError, match="divisible"):
        models.tiny_gpt2_config(100, n_embd=96, n_head=5)


def test_load_policy_local_dir(tok, tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, t2 = models.load_policy(tmp_path)
    assert not model.training and t2.pad_token_id == tok.pad_token_id
    assert all(torch.equal(a, b) for a, b in zip(tiny.parameters(), model.parameters()))
    with pytest.raises(ValueError, match="config.json"):
        models.load_policy(tmp_path.parent)
    with pytest.raises(ValueError, match="neither an existing folder"):
        models.load_policy("./no/such/folder/here")


def test_load_policy_hub_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(models.HubUnavailableError, match="local folder"):
        models.load_policy("minirl-test/no-such-model-anywhere")
    assert time.perf_counter() - t0 < 10


def test_load_policy_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert not models.hub_reachable(timeout=1.0)
    t0 = time.perf_counter()
    with pytest.raises(models.HubUnavailableError, match="did not answer"):
        models.load_policy("minirl-test/no-such-model-anywhere", timeout=1.0)
    assert time.perf_counter() - t0 < 10


def test_load_policy_requires_pad(tok, tiny, tmp_path):
    import copy

    t = copy.deepcopy(tok)
    t.pad_token = None
    tiny.save_pretrained(tmp_path)
    t.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no PAD"):
        models.load_policy(tmp_path)
    model, t3 = models.load_policy(tmp_path, pad_as_eos=True)
    assert t3.pad_token_id == t3.eos_token_id


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_scores_under_both_paddings(tok, tiny, side):
    head = models.ScalarHeadModel.from_causal_lm(tiny, seed=0)
    texts = ["the soup was cold.", "i ordered the pasta and it was great. the waiter was lovely.", "ok"]
    ids, am = T.encode_documents(tok, texts, add_eos=False, padding_side=side)
    values = head(ids, am)
    assert values.shape == ids.shape and bool((values[am == 0] == 0).all())
    scores = models.last_token_scores(values, am)
    for i, text in enumerate(texts):  # each text alone, no padding at all
        one = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        alone = head(one, torch.ones_like(one))[0, -1]
        torch.testing.assert_close(scores[i], alone, atol=1e-5, rtol=1e-5)


def test_last_token_scores_exact_and_errors():
    v = torch.arange(12.0).reshape(3, 4)
    m = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert models.last_token_scores(v, m).tolist() == [1.0, 7.0, 11.0]
    with pytest.raises(ValueError, match="at least one real token"):
        models.last_token_scores(v, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="shape"):
        models.last_token_scores(v, m[:, :3])


def test_scalar_head_save_load(tok, tiny, tmp_path):
    head = models.ScalarHeadModel.from_causal_lm(tiny, seed=3)
    assert head.head.bias.item() == 0.0
    assert head.backbone is not tiny.transformer  # a copy: training the head leaves the policy alone
    head.save_pretrained(tmp_path / "rm")
    back = models.ScalarHeadModel.from_pretrained(tmp_path / "rm")
    ids, am = T.encode_documents(tok, ["the soup was cold.", "great"])
    torch.testing.assert_close(head(ids, am), back(ids, am))
    # from a causal-LM folder: the same backbone, a fresh head drawn with the seed
    tiny.save_pretrained(tmp_path / "lm")
    fresh = models.ScalarHeadModel.from_pretrained(tmp_path / "lm", seed=3)
    torch.testing.assert_close(fresh(ids, am), head(ids, am))


# ---------------------------------------------------------------- rewards
def test_vader_and_gold_sentiment():
    texts = ["the soup was great.", "the soup was soggy and bland.", "the soup was not good."]
    v = rewards.vader_sentiment(texts)
    g = rewards.gold_sentiment_reward(texts)
    assert v.shape == g.shape == (3,) and bool((v.abs() <= 1).all())
    assert v[0] > 0 and v[1] == 0 and v[2] < 0  # trap 1: the lexicon does not know soggy/bland
    assert g[0] > 0 and g[1] < 0 and g[2] < 0
    with pytest.raises(ValueError, match="list of str"):
        rewards.vader_sentiment("one string")


def test_review_reward_factors_and_farming_trap():
    prompts = ["the soup was"] * 4
    responses = [" great and the staff was friendly.", " great great great great great great!!!",
                 " great.", " great and the pizza was lovely too."]
    total, c = rewards.review_reward(prompts, responses)
    assert set(c) == {"sentiment", "length", "repetition", "on_topic"}
    assert c["sentiment"][1] > c["sentiment"][0]  # trap 3: farming raises the proxy ...
    assert total[1] < total[0]                    # ... but the repetition factor takes it back
    assert c["repetition"][0] == 0 and c["repetition"][1] > 0.5
    assert c["length"][2] == pytest.approx(1 / 6)  # 1 word of the 6 asked
    assert c["on_topic"].tolist() == [1.0, 1.0, 1.0, 0.0]  # the pizza is another dish
    farmed, _ = rewards.review_reward(prompts, responses, weights={"repetition": 0.0})
    assert farmed[1] > farmed[0]  # without the penalty, farming wins
    neg, cn = rewards.review_reward(prompts, responses, target="negative", sentiment="gold")
    assert bool((cn["sentiment"] < 0).all())
    with pytest.raises(ValueError, match="unknown weight"):
        rewards.review_reward(prompts, responses, weights={"fluency": 1.0})


def test_arithmetic_verifiers():
    good, wrong, broken = " 12+7=19. 19-5=14. A: 14", " 12+7=19. 19-5=15. A: 15", " the answer is 14"
    assert rewards.parse_answer(good) == 14 and rewards.parse_answer(broken) is None
    assert [rewards.format_reward(r) for r in (good, wrong, broken)] == [1.0, 1.0, 0.0]
    assert [rewards.exact_match_reward(r, 14) for r in (good, wrong, broken)] == [1.0, 0.0, 0.0]
    assert rewards.process_reward(wrong, "min") == 0.0 and rewards.process_reward(wrong, "mean") == 0.5
    assert rewards.process_reward(good) == 1.0 and rewards.process_reward(broken) == 0.0
    assert rewards.eval_expression("3*8+2-10") == 16
    # the loose verifier's trap: a list of numbers passes, the strict one does not
    hack = " A: " + " ".join(str(i) for i in range(100))
    assert rewards.loose_match_reward(hack, 14) == 1.0 and rewards.exact_match_reward(hack, 14) == 0.0
    assert rewards.loose_match_reward(broken, 14) == 1.0  # no format, still "right"
    r = rewards.arithmetic_rewards([good, wrong, hack], [14, 14, 14], kind="loose")
    assert r.tolist() == [1.0, 0.0, 1.0]  # "15" and "19" are not "14", but the hack is
    with pytest.raises(ValueError, match="kind"):
        rewards.arithmetic_rewards([good], [14], kind="fuzzy")


def test_world_answers_pass_every_strict_verifier():
    from minirl import world

    for p in world.arithmetic_problems(300, seed=5):
        r = p["response"]
        assert rewards.format_reward(r) == rewards.exact_match_reward(r, p["answer"]) == 1.0
        assert rewards.process_reward(r) == 1.0


def test_hub_classifier_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(models.HubUnavailableError, match="vader"):
        rewards.load_hub_sentiment_classifier("minirl-test/no-such-classifier")
    assert time.perf_counter() - t0 < 15


# ---------------------------------------------------------------- SFT loss
def test_sft_loss_matches_transformers_labels_loss(tok, tiny):
    from minirl.lm import sequence_logprobs
    from minirl.losses import sft_loss

    batch = T.encode_prompt_response(tok, ["write a review of the soup:", "Q: 3+4=?"],
                                     [" the soup was cold.", " 3+4=7. A: 7"])
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    lp = sequence_logprobs(tiny, ids, am)
    labels = ids.masked_fill(rm == 0, -100)  # transformers ignores -100: prompt and padding
    ref = tiny(input_ids=ids, attention_mask=am, labels=labels).loss
    torch.testing.assert_close(sft_loss(lp, rm), ref, atol=1e-5, rtol=1e-5)
    by_hand = torch.stack([-(lp[i][rm[i].bool()]).mean() for i in range(2)]).mean()
    torch.testing.assert_close(sft_loss(lp, rm, normalize="sequence"), by_hand)
    garbage = lp.masked_fill(rm == 0, 123.0)  # entries outside the mask do not count
    torch.testing.assert_close(sft_loss(garbage, rm), sft_loss(lp, rm))
    with pytest.raises(ValueError, match="normalize"):
        sft_loss(lp, rm, normalize="batch")
    with pytest.raises(ValueError, match="shape"):
        sft_loss(lp, rm[:, :2])
