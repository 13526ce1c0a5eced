"""minirl.algos.reinforce: the package loop reproduces lesson 04's inline `train` bit for bit
(batch baseline, k1 penalty, reward offset), the logged KL is 0 on the first step, and bad input
raises ValueError (stop-and-resume: tests/test_algos_shared.py)."""
import copy
import dataclasses
import math

import pytest
import torch

from minirl import lm, models, world
from minirl.algos import reinforce as R
from minirl.losses import reinforce_loss
from minirl.rollout import make_reference, sample

PROMPTS = [p["prompt"] for p in world.arithmetic_prompts(8, seed=3, levels=(1,))]


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


def short_reward(s):
    """1 for responses of at most 6 tokens, else 0, in the default dtype (lesson 04's rewards are)."""
    return (s.response_mask.sum(-1) <= 6).to(torch.get_default_dtype())


# ------------------------------------------------------------------ lesson 04's inline code, as written there


def forward(model, s):
    am = s.attention_mask
    logits = model(input_ids=s.sequences, attention_mask=am, position_ids=lm.position_ids_from_mask(am)).logits
    logits = logits[:, s.prompt_length - 1: -1]
    logp = torch.log_softmax(logits, -1).gather(-1, s.response_ids[..., None]).squeeze(-1)
    return logits, logp * s.response_mask


def reward_to_go(rewards_t, mask, gamma=1.0):
    G, out = torch.zeros_like(rewards_t[:, 0]), torch.zeros_like(rewards_t)
    for t in reversed(range(rewards_t.shape[1])):
        G = rewards_t[:, t] + gamma * G
        out[:, t] = G
    return out * mask


def terminal(Rw, mask):
    last = mask.sum(-1).long() - 1
    return torch.zeros_like(mask).scatter(1, last[:, None], Rw[:, None].to(mask.dtype))


def advantages(cfg, Rw, logp, ref_logp, m):
    r_t = terminal(Rw, m) - cfg.kl_coef * (logp - ref_logp) * m
    G = reward_to_go(r_t, m)
    b = Rw.mean() if cfg.baseline == "batch" else torch.zeros(())
    return (G - b) * m


def lesson04_train(tok, policy, cfg):
    pol, ref = copy.deepcopy(policy), make_reference(policy)
    opt = torch.optim.Adam(pol.parameters(), lr=cfg.lr)
    gen, rewards = torch.Generator().manual_seed(cfg.seed), []
    for _ in range(cfg.n_updates):
        batch = [PROMPTS[i] for i in torch.randint(len(PROMPTS), (cfg.batch_size,), generator=gen).tolist()]
        s = sample(pol, tok, batch, cfg.max_new_tokens, generator=gen)
        Rw = short_reward(s)
        logits, logp = forward(pol, s)
        with torch.no_grad():
            ref_logits, ref_logp = forward(ref, s)
        m = s.response_mask.to(logp.dtype)
        loss = reinforce_loss(logp, advantages(cfg, Rw + cfg.reward_offset, logp.detach(), ref_logp, m), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rewards.append(Rw.mean().item())
    return pol, rewards


@pytest.mark.parametrize("kw", [{}, {"kl_coef": 0.1, "reward_offset": 2.0}, {"baseline": "none", "kl_coef": 0.05}])
def test_package_loop_reproduces_lesson_04_bit_for_bit(tok, float64_default, kw):
    cfg = R.ReinforceConfig(n_updates=3, batch_size=8, max_new_tokens=8, lr=1e-3, seed=1, **kw)
    inline, rewards = lesson04_train(tok, tiny(tok), cfg)
    policy = tiny(tok)
    rows = R.train_reinforce(R.init_reinforce(policy, cfg), tok, PROMPTS, short_reward, cfg)
    assert [r["reward"] for r in rows] == rewards
    for a, b in zip(inline.parameters(), policy.parameters()):
        assert torch.equal(a, b)
    assert abs(rows[0]["kl"]) < 1e-12 and abs(rows[0]["kl_token_k3"]) < 1e-12  # policy = reference at step 0
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for k in ("loss", "grad_norm", "entropy", "response_length", "truncated", "kl_token_k1", "time_update"):
        assert all(math.isfinite(r[k]) for r in rows), k


def test_bad_input_raises_value_errors(tok, float64_default):
    for kw, msg in [({"baseline": "mean"}, "baseline"), ({"lr": 0}, "lr"), ({"kl_coef": -1}, "kl_coef"),
                    ({"batch_size": 1}, "batch_size >= 2"), ({"n_updates": 0}, "n_updates"), ({"gamma": 0}, "gamma")]:
        with pytest.raises(ValueError, match=msg):
            R.init_reinforce(tiny(tok), dataclasses.replace(R.ReinforceConfig(), **kw))
    cfg = R.ReinforceConfig(n_updates=1, batch_size=2, max_new_tokens=4)
    state = R.init_reinforce(tiny(tok), cfg)
    with pytest.raises(ValueError, match="list of str"):
        R.train_reinforce(state, tok, "Q: 1+1=?", short_reward, cfg)
    with pytest.raises(ValueError, match="one reward per response"):
        R.reinforce_step(state, tok, PROMPTS[:2], lambda s: torch.zeros(3), cfg)
    with pytest.raises(ValueError, match="torch.Tensor"):
        R.reinforce_step(state, tok, PROMPTS[:2], lambda s: [0.0, 1.0], cfg)
    with pytest.raises(FloatingPointError, match="not finite"):
        R.reinforce_step(state, tok, PROMPTS[:2], lambda s: torch.full((2,), float("nan")), cfg)
