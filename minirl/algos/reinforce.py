"""REINFORCE on sequences: sample one response per prompt, score it, put the score on the last
response token (minus an optional per-token KL penalty), reward-to-go, a batch-mean baseline,
one gradient step on `minirl.losses.reinforce_loss`.

Derived in notebooks/04_lm_as_policy.ipynb (its inline `Config` and `train`: Eqs. (4)-(6)); this
is the same loop in the house shape of `minirl.algos` (a flat config, a state, a step, a loop), so
that the lesson can check its inline loop against it. Lesson 13's RLOO / GRPO are this loop with
a group baseline (`minirl.algos.grpo`).

    ReinforceConfig                                   the hyperparameters (lesson 04's defaults)
    init_reinforce(policy, cfg) -> ReinforceState     reference copy, Adam, a generator on the
                                                      policy's device
    reinforce_step(state, tok, prompts, score_fn, cfg) -> row
    train_reinforce(state, tok, prompts, score_fn, cfg, ...)   draws prompts, logs, checkpoints
    resume_reinforce(state, path)

One step, per response i with tokens t = 1..T_i (mask m):
    r_t  = [t = T_i] (R_i + reward_offset) - kl_coef * (log pi(y_t) - log pi_ref(y_t))   Eq. (6)
    G_t  = sum_{l >= t} gamma^(l - t) r_l                                               Eq. (4)
    A_t  = G_t - b,  b = mean_i (R_i + reward_offset) ("batch") or 0 ("none")           Eq. (5)
    loss = reinforce_loss(log pi, A, m)   (mean over the batch's response tokens)
`score_fn(samples) -> (B,)` gives R (cast to the policy's dtype and device), the same contract as
`minirl.algos.grpo`; `gold_fn` (same contract, optional) is only measured.

Logged per step (the names of lesson 08 / 13 where they exist): iteration, reward (mean R, without
the offset), gold (with gold_fn), kl (mean over responses of the summed k1, KL(pi || pi_ref) in
nats), kl_token_k1, kl_token_k3 (per-token means of the k1 and k3 estimates, lesson 04's
Eqs. (7)), loss, grad_norm, entropy (mean over response tokens), response_length, truncated
(fraction without EOS), time_*.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..advantages import discounted_returns
from ..checks import check_int, check_prompts, check_tensor
from ..kl import k3
from ..lm import response_logprobs
from ..losses import reinforce_loss
from ..masks import masked_mean
from ..rollout import Samples, check_generator, kl_penalized_rewards, make_generator, make_reference, sample
from ..training import load_checkpoint, model_device, optimizer_step, run_loop, save_checkpoint
from ..utils import timer

__all__ = ["ReinforceConfig", "ReinforceState", "check_config", "init_reinforce", "reinforce_step",
           "train_reinforce", "resume_reinforce", "sequence_advantages"]

BASELINES = ("batch", "none")


@dataclass
class ReinforceConfig:
    """Hyperparameters of REINFORCE on sequences. Defaults are lesson 04's `Config`."""

    n_updates: int = 30
    """policy-gradient steps"""
    batch_size: int = 64
    """responses per step (one per prompt drawn)"""
    max_new_tokens: int = 24
    """responses are cut here if no EOS was sampled"""
    temperature: float = 1.0
    """sampling temperature; the trained log-probs are taken at the same temperature"""
    lr: float = 1e-4
    """Adam learning rate"""
    baseline: str = "batch"
    """"batch" (this batch's mean reward) or "none" """
    kl_coef: float = 0.0
    """beta of the per-token k1 penalty in the reward, Eq. (6)"""
    reward_offset: float = 0.0
    """a constant added to every reward (a reward model's arbitrary zero point)"""
    gamma: float = 1.0
    """discount over response tokens"""
    max_grad_norm: float | None = None
    """clip the global gradient norm (None: no clipping, lesson 04; the norm is still logged)"""
    seed: int = 0
    """seeds the prompt draws and the sampling"""


def check_config(cfg: ReinforceConfig) -> None:
    """Raise ValueError, naming the field, for a configuration that cannot run."""
    if not isinstance(cfg, ReinforceConfig):
        raise ValueError(f"cfg must be a ReinforceConfig, got {type(cfg).__name__}")
    for name in ("n_updates", "batch_size", "max_new_tokens"):
        check_int(getattr(cfg, name), name)
    if cfg.baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {cfg.baseline!r}")
    if cfg.baseline == "batch" and cfg.batch_size < 2:
        raise ValueError(f"baseline='batch' needs batch_size >= 2, got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if not cfg.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {cfg.temperature}")
    if not cfg.kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {cfg.kl_coef}")
    if not 0 < cfg.gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {cfg.gamma}")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {cfg.max_grad_norm}")


@dataclass
class ReinforceState:
    """What persists between steps: the policy, the frozen reference, Adam, the generator (on the
    policy's device), the log and the last rollout."""

    policy: object
    ref_model: object
    optimizer: object
    generator: torch.Generator
    history: list = field(default_factory=list)
    last_samples: Samples | None = None


def init_reinforce(policy, cfg: ReinforceConfig, ref_model=None) -> ReinforceState:
    """Check the config; the reference is a frozen copy of `policy` unless given; Adam over the
    trainable parameters; a generator on the policy's device seeded with cfg.seed."""
    check_config(cfg)
    ref_model = make_reference(policy) if ref_model is None else ref_model
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    return ReinforceState(policy, ref_model, opt, make_generator(cfg.seed, model_device(policy)))


def sequence_advantages(scores, logprobs, ref_logprobs, mask, cfg: ReinforceConfig) -> torch.Tensor:
    """Eqs. (4)-(6): (B,) scores (offset included), (B, T) log-probs of the policy (detached) and
    of the reference, (B, T) float mask -> (B, T) advantages (G_t - b) * m."""
    rewards, _ = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, cfg.kl_coef, "k1")  # Eq. (6)
    G = discounted_returns(rewards, mask, cfg.gamma)  # Eq. (4)
    b = scores.mean() if cfg.baseline == "batch" else torch.zeros((), dtype=scores.dtype, device=scores.device)
    return (G - b) * mask  # Eq. (5)


def reinforce_step(state: ReinforceState, tokenizer, prompts, score_fn: Callable[[Samples], torch.Tensor],
                   cfg: ReinforceConfig, gold_fn: Callable | None = None) -> dict:
    """One rollout + one gradient step on `prompts` (list[str], one response each). Returns the
    row (also appended to state.history)."""
    check_config(cfg)
    check_prompts(prompts)
    policy, t = state.policy, {}
    check_generator(state.generator, model_device(policy))
    with timer(t, "generate"):
        s = sample(policy, tokenizer, list(prompts), cfg.max_new_tokens, cfg.temperature, state.generator)
    with timer(t, "score"):
        raw = score_fn(s)
        check_tensor(raw, "score_fn output", ndim=1)
        if raw.shape[0] != len(prompts):
            raise ValueError(f"score_fn must return one reward per response, shape ({len(prompts)},), "
                             f"got {tuple(raw.shape)}")
        s.raw_scores = raw.detach().to(device=s.logprobs.device, dtype=s.logprobs.dtype)
        bad = (~torch.isfinite(s.raw_scores)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(f"reward is not finite for rows {bad[:8]}: training stopped")
        s.scores = s.raw_scores + cfg.reward_offset
    with timer(t, "reference"), torch.no_grad():
        s.ref_logprobs = response_logprobs(state.ref_model, s.sequences, s.attention_mask, s.prompt_length,
                                           cfg.temperature) * s.response_mask
    seen = {}

    def loss_fn(model, mb):
        logp, ent = response_logprobs(model, mb.sequences, mb.attention_mask, mb.prompt_length, cfg.temperature,
                                      return_entropy=True)
        logp = logp * mb.response_mask  # (B, T), with gradients
        m = mb.response_mask.to(logp.dtype)
        adv = sequence_advantages(mb.scores, logp.detach(), mb.ref_logprobs, m, cfg)
        seen["logp"], seen["entropy"] = logp.detach(), masked_mean(ent.detach(), m)
        return reinforce_loss(logp, adv, m), {}

    with timer(t, "update"):
        policy.train()
        out = optimizer_step(policy, state.optimizer, [s], loss_fn, max_grad_norm=cfg.max_grad_norm,
                             move_to_device=False)
        policy.eval()
    m = s.response_mask.to(s.logprobs.dtype)
    log_r = torch.where(m > 0, s.ref_logprobs - seen["logp"], torch.zeros_like(m))
    row = {
        "iteration": len(state.history),
        "reward": float(s.raw_scores.mean()),
        "kl": float(((-log_r) * m).sum(-1).mean()),
        "kl_token_k1": float(masked_mean(-log_r, m)),
        "kl_token_k3": float(masked_mean(k3(log_r), m)),
        "loss": out["loss"],
        "grad_norm": out["grad_norm"],
        "entropy": float(seen["entropy"]),
        "response_length": float(s.response_mask.sum(-1).to(m.dtype).mean()),
        "truncated": float((~s.has_eos).to(m.dtype).mean()),
    }
    if gold_fn is not None:
        gold = gold_fn(s)
        golds = gold if isinstance(gold, dict) else {"": gold}
        row.update({f"gold_{k}" if k else "gold": float(v.to(m.dtype).mean()) for k, v in golds.items()})
    row.update({f"time_{k}": v for k, v in t.items()})
    state.history.append(row)
    state.last_samples = s
    return row


def train_reinforce(state: ReinforceState, tokenizer, prompts, score_fn, cfg: ReinforceConfig, gold_fn=None, *,
                    log_path=None, checkpoint_path=None, checkpoint_every: int | None = None,
                    max_steps: int | None = None,
                    callback: Callable[[ReinforceState, dict], None] | None = None) -> list[dict]:
    """Steps len(state.history) .. cfg.n_updates - 1 (or up to max_steps in all), each on
    cfg.batch_size prompts drawn uniformly with replacement from `prompts` with the state's
    generator. Each row is appended to the JSONL `log_path` (a resumed state keeps its earlier
    rows), then callback(state, row) (it must not draw from state.generator). With checkpoint_path
    a checkpoint (policy, Adam, RNG states and the generator's, history) is saved every
    checkpoint_every steps and after the last step of this call. A failing step appends
    {"iteration", "stopped"} to the log and re-raises. Returns state.history."""
    check_config(cfg)
    check_prompts(prompts)
    done = len(state.history)
    end = cfg.n_updates if max_steps is None else min(cfg.n_updates, max_steps)
    if checkpoint_every is not None:
        check_int(checkpoint_every, "checkpoint_every")

    def step(_):
        g = state.generator
        idx = torch.randint(len(prompts), (cfg.batch_size,), generator=g, device=g.device).tolist()
        return reinforce_step(state, tokenizer, [prompts[i] for i in idx], score_fn, cfg, gold_fn)

    def after(row):
        n = len(state.history)
        if checkpoint_path is not None and (n == end or (checkpoint_every is not None and n % checkpoint_every == 0)):
            save_checkpoint(checkpoint_path, state.policy, state.optimizer, step=n, generator=state.generator,
                            extra={"history": state.history})
        if callback is not None:
            callback(state, row)

    run_loop(step, max(0, end - done), log_path=log_path, resume_step=done, first_index=done, callback=after)
    return state.history


def resume_reinforce(state: ReinforceState, path) -> ReinforceState:
    """Load a `train_reinforce` checkpoint into a freshly built state (`init_reinforce` with the
    same config): weights, Adam, RNG states, the generator, history."""
    info = load_checkpoint(path, state.policy, state.optimizer, generator=state.generator)
    state.history = list((info["extra"] or {}).get("history", []))
    if len(state.history) != info["step"]:
        raise ValueError(f"the checkpoint at {path} holds {len(state.history)} rows for step {info['step']}")
    return state
