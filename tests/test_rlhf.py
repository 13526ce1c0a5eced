"""PPO-RLHF pieces (minirl.rlhf): per-token rewards by hand, the EOS penalty, the KL controller
wiring, failure stops that keep the log, and a short end-to-end run whose reward rises."""
import json
import math

import pytest
import torch

from minirl import kl as kl_mod
from minirl import models, rlhf, world



def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


def low_id_fraction(s):
    """Easy reward: the fraction of response tokens whose id is < 64 (about 10% of the vocabulary)."""
    return ((s.response_ids < 64) & (s.response_mask > 0)).float().sum(-1) / s.response_mask.sum(-1)


PROMPTS = [p["prompt"] for p in world.sentiment_prompts(32)]


def test_kl_penalized_rewards_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -2.5, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    scores = torch.tensor([2.0, -1.0])
    beta = 0.1
    rewards, kl = rlhf.kl_penalized_rewards(scores, logprobs, ref, mask, beta)  # k1 = logprobs - ref
    k1 = torch.tensor([[0.5, -1.0, 0.0], [0.0, 1.0, -1.0]])
    torch.testing.assert_close(kl, k1)
    expected = torch.tensor([[-0.05, 0.1 + 2.0, 0.0], [0.0, -0.1, 0.1 - 1.0]])
    torch.testing.assert_close(rewards, expected)
    # summed over the response: score - beta * (log pi - log pi_ref) summed, the sign that matters
    torch.testing.assert_close(rewards.sum(-1), scores - beta * ((logprobs - ref) * mask).sum(-1))
    # k3 branch: (r - 1) - log r with log r = ref - logprobs
    _, kl3 = rlhf.kl_penalized_rewards(scores, logprobs, ref, mask, beta, estimator="k3")
    log_r = (ref - logprobs) * mask
    torch.testing.assert_close(kl3, (torch.expm1(log_r) - log_r) * mask)
    assert bool((kl3 >= 0).all())
    # beta = 0: only the score, on the last real token
    r0, _ = rlhf.kl_penalized_rewards(scores, logprobs, ref, mask, 0.0)
    torch.testing.assert_close(r0, torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, -1.0]]))


def test_kl_penalized_rewards_rejects_bad_masks():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="response_mask"):
        rlhf.kl_penalized_rewards(torch.zeros(2), lp, lp, torch.ones(2, 4), 0.1)
    with pytest.raises(ValueError, match="at least one"):
        rlhf.kl_penalized_rewards(torch.zeros(2), lp, lp, torch.tensor([[1.0, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="one per response"):
        rlhf.kl_penalized_rewards(torch.zeros(3), lp, lp, torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match="estimator"):
        rlhf.kl_penalized_rewards(torch.zeros(2), lp, lp, torch.ones(2, 3), 0.1, estimator="k4")


def test_missing_eos_penalty():
    scores = torch.tensor([1.0, 0.5, -0.2])
    has_eos = torch.tensor([True, False, False])
    torch.testing.assert_close(rlhf.apply_missing_eos_penalty(scores, has_eos, 1.0), torch.tensor([1.0, -0.5, -1.2]))
    assert rlhf.apply_missing_eos_penalty(scores, has_eos, None) is scores
    cfg = rlhf.PPOConfig(missing_eos_penalty=2.0, normalize_scores=False)
    s = rlhf.Samples([], [], None, has_eos, raw_scores=scores)
    torch.testing.assert_close(rlhf.prepare_scores(None, s, cfg), torch.tensor([1.0, -1.5, -2.2]))


def test_score_normalization_is_frozen_at_the_first_rollout(tok):
    cfg = rlhf.PPOConfig(normalize_scores=True)
    state = rlhf.init_ppo(tiny(tok), cfg)
    eos = torch.ones(4, dtype=torch.bool)
    first = rlhf.Samples([], [], None, eos, raw_scores=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    out = rlhf.prepare_scores(state, first, cfg)
    assert abs(float(out.mean())) < 1e-6 and abs(float(out.std()) - 1) < 1e-6
    later = rlhf.Samples([], [], None, eos, raw_scores=torch.tensor([2.5, 2.5, 2.5, 2.5]))
    torch.testing.assert_close(rlhf.prepare_scores(state, later, cfg), torch.zeros(4))


def test_rollout_alignment_and_critic_init(tok):
    policy = tiny(tok)
    cfg = rlhf.PPOConfig(batch_size=8, minibatch_size=4, max_new_tokens=5)
    state = rlhf.init_ppo(policy, cfg)
    s = rlhf.rollout(state.policy, state.ref_model, state.critic, tok, PROMPTS[:8], low_id_fraction, cfg, state.generator)
    # the sampler's log-probs equal teacher-forced ones of the (identical) reference: ratio 1 at the start
    torch.testing.assert_close(s.logprobs, s.ref_logprobs, atol=2e-5, rtol=0)
    assert float(s.values.abs().max()) == 0.0  # zero-initialized value head
    assert s.raw_scores.dtype == torch.get_default_dtype()  # scores are not rounded to another dtype
    # values[:, t] is the critic at the position BEFORE response token t
    critic = rlhf.make_critic(policy, "normal", seed=1)
    v = rlhf.critic_values(critic, s.sequences, s.attention_mask, s.prompt_length)
    full = critic(s.sequences, s.attention_mask)
    P = s.prompt_length
    torch.testing.assert_close(v[:, 0], full[:, P - 1])
    torch.testing.assert_close(v[:, -1], full[:, -2])
    assert float(critic.head.weight.detach().abs().sum()) > 0
    with pytest.raises(ValueError, match="value_head_init"):
        rlhf.make_critic(policy, "ones")


def test_controller_wiring(tok):
    B, horizon = 8, 100.0
    cfg = rlhf.PPOConfig(n_iterations=1, batch_size=B, minibatch_size=4, max_new_tokens=4, lr=1e-2,
                         adaptive_kl=True, kl_coef=0.2, kl_target=1e-3, kl_horizon=horizon)
    state = rlhf.init_ppo(tiny(tok), cfg)
    assert isinstance(state.controller, kl_mod.AdaptiveKLController)
    rows = rlhf.train_ppo(state, tok, PROMPTS, low_id_fraction, cfg)
    rows += rlhf.train_ppo(state, tok, PROMPTS, low_id_fraction, cfg)
    assert rows[0]["beta"] == 0.2
    err = min(max(rows[1]["kl"] / 1e-3 - 1, -0.2), 0.2)
    expected = 0.2 * (1 + min(max(rows[0]["kl"] / 1e-3 - 1, -0.2), 0.2) * B / horizon)
    assert math.isclose(rows[1]["beta"], expected, rel_tol=1e-9)
    assert math.isclose(state.controller.value, expected * (1 + err * B / horizon), rel_tol=1e-9)
    fixed = rlhf.init_ppo(tiny(tok), rlhf.PPOConfig(batch_size=B, minibatch_size=4, kl_coef=0.3))
    assert isinstance(fixed.controller, kl_mod.FixedKLController)
    assert fixed.controller.update(50.0, B) == 0.3


def test_nan_score_stops_and_keeps_log(tok, tmp_path):
    calls = {"n": 0}

    def flaky(s):
        calls["n"] += 1
        r = low_id_fraction(s)
        return r if calls["n"] < 3 else r * float("nan")

    cfg = rlhf.PPOConfig(n_iterations=5, batch_size=8, minibatch_size=4, max_new_tokens=4)
    log = tmp_path / "runs" / "ppo.jsonl"
    with pytest.raises(FloatingPointError, match="score"):
        rlhf.train_ppo(rlhf.init_ppo(tiny(tok), cfg), tok, PROMPTS, flaky, cfg, log_path=log)
    rows = rlhf.read_jsonl(log)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert "time_generate" in rows[0] and "stopped" in rows[2] and "not finite" in rows[2]["stopped"]


def test_kl_threshold_stops_with_its_name(tok, tmp_path):
    cfg = rlhf.PPOConfig(n_iterations=6, batch_size=8, minibatch_size=4, max_new_tokens=6, lr=3e-2,
                         kl_coef=0.0, max_kl=0.05)
    log = tmp_path / "ppo.jsonl"
    with pytest.raises(FloatingPointError, match=r"kl .* exceeds its threshold 0.05"):
        rlhf.train_ppo(rlhf.init_ppo(tiny(tok), cfg), tok, PROMPTS, low_id_fraction, cfg, log_path=log)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert rows[-1]["stopped"].startswith("kl") and len(rows) >= 2


def test_config_validation(tok):
    with pytest.raises(ValueError, match="multiple"):
        rlhf.init_ppo(tiny(tok), rlhf.PPOConfig(batch_size=10, minibatch_size=4))
    with pytest.raises(ValueError, match="kl_estimator"):
        rlhf.init_ppo(tiny(tok), rlhf.PPOConfig(kl_estimator="exact"))


def test_ppo_raises_an_easy_reward(tok):
    cfg = rlhf.PPOConfig(n_iterations=10, batch_size=16, minibatch_size=8, max_new_tokens=6, lr=1e-2, kl_coef=0.0)
    golds = lambda s: {"len": s.response_mask.sum(-1), "zero": torch.zeros(s.response_mask.shape[0])}
    seen = []
    rows = rlhf.train_ppo(rlhf.init_ppo(tiny(tok), cfg), tok, PROMPTS, low_id_fraction, cfg, gold_fn=golds,
                          callback=lambda state, row: seen.append((row["iteration"], len(state.history))))
    assert seen == [(i, i + 1) for i in range(cfg.n_iterations)]  # called after each row, with the updated state
    assert rows[0]["gold_zero"] == 0.0 and 1 <= rows[0]["gold_len"] <= 6
    first = sum(r["score"] for r in rows[:3]) / 3
    last = sum(r["score"] for r in rows[-3:]) / 3
    assert last > first + 0.08, (first, last)
    assert rows[-1]["kl"] > 0.1  # it moved away from the reference
    for k in ("reward", "kl", "beta", "entropy", "approx_kl", "clipfrac", "explained_variance",
              "response_length", "time_generate", "time_score", "time_reference", "time_value", "time_update"):
        assert k in rows[-1]


def test_evaluate_policy_means_and_standard_errors(tok):
    policy = tiny(tok)
    ref = rlhf.make_reference(policy)
    golds = lambda s: {"len": s.response_mask.sum(-1), "eos": s.has_eos.double()}
    ev = rlhf.evaluate_policy(policy, ref, tok, PROMPTS[:12], low_id_fraction, golds, max_new_tokens=5,
                              generator=torch.Generator().manual_seed(3))
    s = rlhf.sample(policy, tok, PROMPTS[:12], 5, 1.0, torch.Generator().manual_seed(3))  # the same draws
    score = low_id_fraction(s).double()
    assert ev["n"] == 12
    assert math.isclose(ev["proxy"], float(score.mean()), rel_tol=1e-12)
    assert math.isclose(ev["proxy_sem"], float(score.std()) / 12 ** 0.5, rel_tol=1e-12)
    assert math.isclose(ev["gold_len"], float(s.response_mask.sum(-1).mean()), rel_tol=1e-12)
    assert math.isclose(ev["length"], ev["gold_len"], rel_tol=1e-12)
    assert math.isclose(ev["truncated"], 1 - ev["gold_eos"], abs_tol=1e-12) and "gold_eos_sem" in ev
    assert abs(ev["kl"]) < 1e-5 and ev["kl_sem"] < 1e-5      # a policy against its own frozen copy
    with pytest.raises(ValueError, match="at least 2"):
        rlhf.evaluate_policy(policy, ref, tok, PROMPTS[:1], low_id_fraction)
