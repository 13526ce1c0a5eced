"""minirl.algos.grpo: one step of the loop on a tiny model in float64 (dtypes and devices follow
the model, logged names, on-policy ratio 1), the advantage switches, the zero-std filter, the token
budget, and ValueErrors for bad configurations and inputs."""
import dataclasses
import math

import pytest
import torch

from minirl import models, world
from minirl.advantages import group_advantages, rloo_advantages
from minirl.algos import grpo
from minirl.rlhf import text_scorer

PROBLEMS = world.arithmetic_prompts(8, seed=3, levels=(1,))
PROMPTS = [p["prompt"] for p in PROBLEMS]


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


def short_reward(s):
    """Varied rewards for a random model: 1 for responses of at most 3 tokens, else 0 (as default dtype)."""
    return (s.response_mask.sum(-1) <= 3).to(torch.get_default_dtype())


def cfg(**kw):
    base = dict(n_iterations=1, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=1e-3, seed=0)
    base.update(kw)
    return grpo.GRPOConfig(**base)


def test_step_float64_follows_model_and_logs(tok, float64_default):
    policy = tiny(tok)
    assert next(policy.parameters()).dtype == torch.float64
    c = cfg()
    state = grpo.init_grpo(policy, c)
    before = [p.detach().clone() for p in policy.parameters()]
    row = grpo.grpo_step(state, tok, PROMPTS[:2], short_reward, c)
    s = state.last_samples
    assert s.sequences.shape[0] == 8 and s.prompts[:4] == [PROMPTS[0]] * 4  # G contiguous rows per prompt
    for x in (s.logprobs, s.ref_logprobs, s.scores):
        assert x.dtype == torch.float64 and x.device == next(policy.parameters()).device
    for k in ("reward", "reward_std", "frac_reward_zero_std", "kl", "loss", "clip_low", "clip_high", "clipfrac",
              "grad_norm", "entropy", "response_length", "truncated", "sampled_tokens", "time_generate", "time_update"):
        assert k in row and math.isfinite(row[k]), k
    assert row["sampled_tokens"] == int(s.response_mask.sum()) == state.sampled_tokens
    assert row["clipfrac"] == 0.0 and abs(row["kl"]) < 1e-9  # on-policy first pass, policy = reference
    assert row["optimizer_steps"] == 1 and state.history == [row]
    moved = any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert moved == (row["frac_reward_zero_std"] < 1)


def test_float32_model_gives_float32_tensors(tok):
    policy = tiny(tok).float()
    c = cfg(loss_type="dr_grpo", advantage="rloo")
    state = grpo.init_grpo(policy, c)
    grpo.grpo_step(state, tok, PROMPTS[:2], lambda s: short_reward(s).double(), c)  # a float64 reward is cast
    assert state.last_samples.scores.dtype == torch.float32


def test_advantage_switches(float64_default):
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    c = cfg()
    torch.testing.assert_close(grpo.compute_advantages(r, c), group_advantages(r, 4))
    torch.testing.assert_close(grpo.compute_advantages(r, dataclasses.replace(c, scale_rewards="none")),
                               r - r.view(2, 4).mean(1).repeat_interleave(4))
    torch.testing.assert_close(grpo.compute_advantages(r, dataclasses.replace(c, advantage="rloo")), rloo_advantages(r, 4))
    torch.testing.assert_close(grpo.compute_advantages(r, dataclasses.replace(c, advantage="reinforce")), r - r.mean())


def test_all_equal_groups_take_no_step_with_the_filter(tok, float64_default):
    policy = tiny(tok)
    c = cfg(drop_zero_std_groups=True, num_iterations=2)
    state = grpo.init_grpo(policy, c)
    before = [p.detach().clone() for p in policy.parameters()]
    row = grpo.grpo_step(state, tok, PROMPTS[:2], lambda s: torch.zeros(len(s.responses)), c)
    assert row["frac_reward_zero_std"] == 1.0 and row["optimizer_steps"] == 0 and row["loss"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_minibatches_passes_and_token_budget(tok, float64_default):
    c = cfg(n_iterations=5, num_iterations=2, minibatch_size=4, max_sampled_tokens=1, clip_eps_high=0.28,
            importance_level="sequence", beta=0.05, loss_type="dapo")
    state = grpo.init_grpo(tiny(tok), c)
    rows = grpo.train_grpo(state, tok, PROMPTS, short_reward, c)
    assert len(rows) == 1 and rows[0]["optimizer_steps"] == 4  # budget reached after one step


def test_arithmetic_reward_end_to_end(tok, float64_default):
    answers = {p["prompt"]: p["answer"] for p in PROBLEMS}
    from minirl.rewards import exact_match_reward

    score = text_scorer(lambda p, r: exact_match_reward(r, answers[p]))
    c = cfg(n_iterations=2)
    rows = grpo.train_grpo(grpo.init_grpo(tiny(tok), c), tok, PROMPTS, score, c)
    assert [r["iteration"] for r in rows] == [0, 1]


@pytest.mark.parametrize("bad", [
    dict(group_size=1), dict(loss_type="sum"), dict(advantage="ppo"), dict(scale_rewards="std"),
    dict(importance_level="word"), dict(clip_eps=0.0), dict(minibatch_size=3), dict(num_iterations=0),
    dict(beta=-0.1), dict(temperature=0.0), dict(max_sampled_tokens=0),
])
def test_bad_config_raises(tok, bad):
    with pytest.raises(ValueError):
        grpo.init_grpo(tiny(tok), cfg(**bad))


def test_bad_inputs_raise(tok, float64_default):
    c = cfg()
    state = grpo.init_grpo(tiny(tok), c)
    with pytest.raises(ValueError, match="prompts_per_step"):
        grpo.grpo_step(state, tok, PROMPTS[:3], short_reward, c)
    with pytest.raises(ValueError):
        grpo.grpo_step(state, tok, "Q: 1+1=?", short_reward, c)
    with pytest.raises(ValueError, match="one reward per response"):
        grpo.grpo_step(state, tok, PROMPTS[:2], lambda s: torch.zeros(3), c)
    with pytest.raises(ValueError):
        grpo.grpo_step(state, tok, PROMPTS[:2], lambda s: torch.zeros(8, 1), c)
    with pytest.raises(FloatingPointError):
        grpo.grpo_step(state, tok, PROMPTS[:2], lambda s: torch.full((8,), float("nan")), c)
    with pytest.raises(ValueError):
        grpo.compute_advantages(torch.zeros(6), c)  # not a multiple of group_size
