"""RLHF with PPO, in short pieces: rollout, per-token KL-penalized rewards, GAE, PPO update, loop.

Derived in notebooks/08_rlhf_ppo.ipynb (Ziegler et al. 2019, "Fine-tuning language models from
human preferences"; Stiennon et al. 2020; the implementation details catalogued by Huang et al.
2022, "The N implementation details of RLHF with PPO"). Reused by lessons 09-10 for comparisons.

The four models of one iteration:
    policy (actor)    generates the responses, then is trained (forward + backward per minibatch)
    critic            ScalarHeadModel, one value per token (forward in the rollout, fwd + bwd in the update)
    reference         frozen copy of the initial policy (one forward per iteration)
    reward model      any `score_fn(samples) -> (B,)` (one forward per iteration, no gradient)

One iteration (`ppo_iteration`, looped by `train_ppo`):
    samples  = rollout(...)                                   generate, score, reference, values
    rewards  = kl_penalized_rewards(scores, logprobs, ref_logprobs, response_mask, beta)
    A, R     = gae(rewards, values, response_mask, gamma, lam) (then whitened A, a switch)
    stats    = ppo_update(...)                                epochs x minibatches of clipped losses
    beta     = controller.update(mean sequence KL, batch size)

The outer loop is `minirl.training.run_loop`; `save_ppo` / `resume_ppo` and `train_ppo(...,
resume=True)` stop and resume a run bit for bit (policy, critic, Adam, generator, adaptive beta,
frozen score normalization; tests/test_algos_shared.py).

A trained policy is measured on fresh samples with `evaluate_policy` (KL, proxy, gold: mean and
standard error; the fraction of samples truncated at the length cap), a wrapper of
`minirl.evaluation.evaluate_policy`.

The pieces every on-policy algorithm shares (Samples, sample, the scorers, per-token KL,
kl_penalized_rewards, sequence_kl, make_reference) live in `minirl.rollout` and are re-exported
here unchanged; this module keeps what is PPO's own (config, critic, rollout with values, update,
state, loop).

Conventions: prompts are left-padded (width P), responses right-padded after EOS (width T);
per-token tensors are (B, T) over the response columns; `response_mask` is 1 up to and including
the first EOS. KL direction: KL(pi_theta || pi_ref), estimated on samples from pi_theta with
log_r = ref_logprobs - logprobs (minirl.kl).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import evaluation
from . import kl as kl_mod
from .advantages import explained_variance, gae, whiten
from .checks import check_finite, check_prompts, check_tensor
from .losses import ppo_policy_loss, ppo_value_loss
from .lm import response_logprobs
from .masks import masked_mean
from .models import ScalarHeadModel
# The shared on-policy plumbing lives in minirl.rollout; re-exported here so that `rlhf.sample`,
# `rlhf.Samples`, `rlhf.make_reference`, ... keep working.
from .rollout import (  # noqa: F401
    KL_ESTIMATORS,
    Samples,
    apply_missing_eos_penalty,
    kl_penalized_rewards,
    last_token_position,
    make_generator,
    make_reference,
    per_token_kl,
    reward_model_scorer,
    sample,
    sequence_kl,
    text_scorer,
)
from .world import read_jsonl  # noqa: F401  (re-exported: reads the JSONL logs written by train_ppo)
from .training import append_jsonl  # noqa: F401  (re-exported: train_ppo's run log)
from .training import load_checkpoint, model_device, run_loop, save_checkpoint
from .utils import timer
from .utils import config_dict  # noqa: F401  (re-exported: the config as a plain dict)

@dataclass
class PPOConfig:
    """Hyperparameters of PPO-RLHF. Defaults suit the tiny model on a CPU (lesson 08); the GPT-2
    sentiment values of the anchors are given in brackets where they differ."""

    n_iterations: int = 20
    """rollout + update cycles"""
    batch_size: int = 32
    """prompts (= responses) per rollout [TRL sentiment: 256, lm-human-preferences: 512]"""
    minibatch_size: int = 16
    """responses per gradient step; batch_size must be a multiple of it"""
    ppo_epochs: int = 2
    """passes over each rollout [4]"""
    max_new_tokens: int = 16
    """response length limit T (a response that hits it without EOS is truncated)"""
    temperature: float = 1.0
    """sampling temperature; log-probs of policy AND reference are taken at the same temperature"""
    lr: float = 3e-4
    """Adam learning rate for policy and critic [1.41e-5]"""
    max_grad_norm: float | None = 1.0
    """clip the global gradient norm (None: no clipping)"""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon"""
    vf_clip_eps: float | None = 0.2
    """value clip, in units of the return (None: plain MSE)"""
    vf_coef: float = 0.1
    """weight of the value loss in the summed loss"""
    gamma: float = 1.0
    """discount over response tokens"""
    lam: float = 0.95
    """GAE lambda"""
    kl_coef: float = 0.1
    """beta: the KL coefficient, or its initial value with `adaptive_kl` [0.15 code, 0.2 TRL]"""
    adaptive_kl: bool = False
    """use AdaptiveKLController (Ziegler et al. 2019) instead of a fixed beta"""
    kl_target: float = 6.0
    """target sequence KL (nats) for the adaptive controller"""
    kl_horizon: float = 10000.0
    """horizon of the adaptive controller, in samples"""
    kl_estimator: str = "k1"
    """per-token KL penalty in the reward: "k1" (-log r, lm-human-preferences and TRL), "k2", "k3".
    DETAIL: k1 is unbiased for KL(pi||pi_ref) but may be negative per token"""
    whiten_advantages: bool = True
    """DETAIL: normalize advantages over the batch's response tokens (mean 0, std 1)"""
    whiten_rewards: bool = False
    """DETAIL: rescale per-token rewards to std 1 (mean kept) before GAE (TRL's `whiten_rewards`)"""
    normalize_scores: bool = False
    """DETAIL: score <- (score - mean) / std with mean and std measured on the FIRST rollout (the
    initial policy) and then frozen (lm-human-preferences' reward gain and bias)"""
    missing_eos_penalty: float | None = None
    """DETAIL: subtract this from the score of a response that never emits EOS (TRL's
    `missing_eos_penalty`; lm-human-preferences instead replaces such scores with -1). None: off"""
    value_head_init: str = "zero"
    """DETAIL: critic head "zero" (lm-human-preferences' value head) or "normal" (N(0, 1/(d+1)),
    the reward head's init); used by `make_critic`"""
    max_kl: float = 100.0
    """stop the run when the mean sequence KL (nats) exceeds this"""
    seed: int = 0
    """seeds the prompt draws, the sampling and the minibatch order"""


# ------------------------------------------------------------------- models


def make_critic(model, value_head_init: str = "zero", seed: int = 0) -> ScalarHeadModel:
    """A critic: a COPY of `model`'s transformer (a causal LM, e.g. the policy, or a
    ScalarHeadModel, e.g. the reward model) with a fresh scalar head.

    value_head_init "zero": weights and bias 0, so V = 0 everywhere at the start (the critic
    learns from returns, nothing random leaks into the first advantages); "normal": the
    ScalarHeadModel default N(0, 1/(n_embd + 1)) weights, bias 0."""
    if value_head_init not in ("zero", "normal"):
        raise ValueError(f"value_head_init must be 'zero' or 'normal', got {value_head_init!r}")
    backbone = model.backbone if isinstance(model, ScalarHeadModel) else model.base_model
    critic = ScalarHeadModel(copy.deepcopy(backbone), seed=seed)
    ref = next(backbone.parameters())
    critic.head.to(device=ref.device, dtype=ref.dtype)  # the head follows the backbone (a float64 policy
    # under a float32 default dtype, or a policy on a GPU)
    if value_head_init == "zero":
        with torch.no_grad():
            critic.head.weight.zero_()
    return critic


# -------------------------------------------------------------------- rollout


def critic_values(critic, sequences, attention_mask, prompt_length: int) -> torch.Tensor:
    """V(s_t) for every response token t: the critic's output at the position BEFORE token t
    (columns P-1 .. P+T-2 of a (B, P + T) batch), since the state of token t is the prefix
    x + y_<t. Returns (B, T), with gradients if the caller enables them."""
    v = critic(sequences, attention_mask)  # (B, P + T)
    T = sequences.shape[1] - prompt_length
    return v[:, prompt_length - 1: prompt_length - 1 + T]


def evaluate_policy(policy, ref_model, tokenizer, prompts, score_fn, gold_fn=None, max_new_tokens: int = 16,
                    temperature: float = 1.0, generator=None) -> dict:
    """A held-out evaluation of a policy: one fresh sample per prompt (repeat prompts for more),
    then means and standard errors over the samples.

    Returns floats {"n", "kl", "kl_sem", "proxy", "proxy_sem", "truncated", "length"} plus, for
    gold_fn (samples -> (B,), or a dict of such tensors, as in `train_ppo`), "gold" / "gold_sem"
    or "gold_<key>" / "gold_<key>_sem". kl is the per-sequence k1 estimate of KL(pi || pi_ref)
    (`sequence_kl`), proxy the score_fn output, truncated the fraction of samples that hit
    max_new_tokens without EOS (their length and KL are censored at the cap), length the mean
    response length in tokens (EOS included). Standard errors: sample std / sqrt(n)."""
    scorers = {"proxy": score_fn} if gold_fn is None else {"proxy": score_fn, "gold": gold_fn}
    out = evaluation.evaluate_policy(policy, ref_model, tokenizer, prompts, scorers, max_new_tokens=max_new_tokens,
                                     temperature=temperature, generator=generator, min_samples=2,
                                     _root=lambda n: n ** 0.5)  # this wrapper's historical rounding
    del out["logp"]
    return out


@torch.no_grad()
def rollout(policy, ref_model, critic, tokenizer, prompts, score_fn, cfg: PPOConfig, generator=None,
            timings: dict | None = None) -> Samples:
    """Generate responses to `prompts` (list[str]), score them, and take the reference log-probs
    and the critic's values. `timings` (a dict) collects seconds under "generate", "score",
    "reference", "value". Scores are returned raw here; see `prepare_scores`."""
    timings = {} if timings is None else timings
    with timer(timings, "generate"):
        s = sample(policy, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, generator)
    with timer(timings, "score"):
        raw = score_fn(s)
        check_tensor(raw, "score_fn output", ndim=1)
        s.raw_scores = raw.detach().to(device=s.logprobs.device, dtype=s.logprobs.dtype)  # the policy's dtype
    with timer(timings, "reference"):
        s.ref_logprobs = response_logprobs(ref_model, s.sequences, s.attention_mask, s.prompt_length,
                                           cfg.temperature) * s.response_mask
    with timer(timings, "value"):
        critic.eval()
        s.values = critic_values(critic, s.sequences, s.attention_mask, s.prompt_length) * s.response_mask
    return s


# ---------------------------------------------------------------------- update


def ppo_update(policy, critic, optimizer, s: Samples, advantages, returns, cfg: PPOConfig, generator=None) -> dict:
    """`cfg.ppo_epochs` passes over the rollout in shuffled minibatches; each step minimizes
    ppo_policy_loss + vf_coef * ppo_value_loss and steps the shared optimizer.
    Returns means over the steps of pg_loss, vf_loss, approx_kl, clipfrac, vf_clipfrac, and the
    entropy of the policy on the response tokens during the first epoch."""
    B = s.sequences.shape[0]
    if B % cfg.minibatch_size:
        raise ValueError(f"batch_size {B} must be a multiple of minibatch_size {cfg.minibatch_size}")
    policy.train()
    critic.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums, n_steps, entropies = {}, 0, []
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator, device=None if generator is None else generator.device)
        for start in range(0, B, cfg.minibatch_size):
            i = order[start:start + cfg.minibatch_size]
            m = s.response_mask[i]
            logprobs, ent = response_logprobs(policy, s.sequences[i], s.attention_mask[i], s.prompt_length,
                                              cfg.temperature, return_entropy=True)
            pg_loss, pg_stats = ppo_policy_loss(logprobs, s.logprobs[i], advantages[i], m, cfg.clip_eps)
            values = critic_values(critic, s.sequences[i], s.attention_mask[i], s.prompt_length)
            vf_loss, vf_stats = ppo_value_loss(values, s.values[i], returns[i], m, cfg.vf_clip_eps)
            loss = pg_loss + cfg.vf_coef * vf_loss
            check_finite(loss, "loss (policy + vf_coef * value)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            if epoch == 0:
                entropies.append(masked_mean(ent.detach(), m))
            for k, v in {"pg_loss": pg_loss.detach(), "vf_loss": vf_loss.detach(), **pg_stats, **vf_stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_steps += 1
    out = {k: v / n_steps for k, v in sums.items()}
    out["entropy"] = float(torch.stack(entropies).mean())
    return out


# ------------------------------------------------------------------------ loop


def make_optimizer(policy, critic, cfg: PPOConfig):
    """One Adam over the policy's and the critic's parameters (eps 1e-5, no weight decay)."""
    params = list(policy.parameters()) + list(critic.parameters())
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=cfg.lr, eps=1e-5)


def make_controller(cfg: PPOConfig):
    """AdaptiveKLController(kl_coef, kl_target, kl_horizon) or FixedKLController(kl_coef)."""
    if cfg.adaptive_kl:
        return kl_mod.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return kl_mod.FixedKLController(cfg.kl_coef)


@dataclass
class PPOState:
    """What persists between iterations: the models, the optimizer, the KL controller, the
    frozen score normalization, the generator, and the list of logged rows."""

    policy: object
    ref_model: object
    critic: object
    optimizer: object
    controller: object
    generator: torch.Generator
    score_shift: float | None = None
    score_scale: float | None = None
    history: list = field(default_factory=list)
    last_samples: Samples | None = None


def init_ppo(policy, cfg: PPOConfig, ref_model=None, critic=None) -> PPOState:
    """Build the state: reference = frozen copy of `policy` unless given, critic = `make_critic`
    of the policy (cfg.value_head_init) unless given, optimizer, controller, generator."""
    if cfg.batch_size % cfg.minibatch_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of minibatch_size {cfg.minibatch_size}")
    if cfg.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {cfg.kl_estimator!r}")
    ref_model = make_reference(policy) if ref_model is None else ref_model
    critic = make_critic(policy, cfg.value_head_init, seed=cfg.seed) if critic is None else critic
    return PPOState(policy, ref_model, critic, make_optimizer(policy, critic, cfg), make_controller(cfg),
                    make_generator(cfg.seed, model_device(policy)))


def prepare_scores(state: PPOState, s: Samples, cfg: PPOConfig) -> torch.Tensor:
    """Raw scores -> the scores put into the reward: check finite, EOS penalty, then (if
    cfg.normalize_scores) the normalization frozen at the first call."""
    raw = s.raw_scores
    bad = (~torch.isfinite(raw)).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(f"score (reward model output) is not finite for rows {bad[:8]}: "
                                 f"training stopped (expected finite scores)")
    scores = apply_missing_eos_penalty(raw, s.has_eos, cfg.missing_eos_penalty)
    if cfg.normalize_scores:
        if state.score_shift is None:
            state.score_shift, state.score_scale = float(scores.mean()), float(scores.std().clamp_min(1e-6))
        scores = (scores - state.score_shift) / state.score_scale
    return scores


def ppo_iteration(state: PPOState, tokenizer, prompts, score_fn, cfg: PPOConfig, gold_fn=None) -> dict:
    """One rollout + update on `prompts` (list[str] of length cfg.batch_size). Returns the row of
    statistics (also appended to state.history). `gold_fn` (optional, samples -> (B,), or a dict
    of such tensors) is logged as "gold" (or "gold_<key>"), never trained on. Raises
    FloatingPointError, naming the statistic and its threshold, on a non-finite score or loss, or a KL above cfg.max_kl."""
    t = {}
    beta = state.controller.value
    s = rollout(state.policy, state.ref_model, state.critic, tokenizer, prompts, score_fn, cfg, state.generator, t)
    s.scores = prepare_scores(state, s, cfg)
    rewards, kl = kl_penalized_rewards(s.scores, s.logprobs, s.ref_logprobs, s.response_mask, beta, cfg.kl_estimator)
    seq_kl = per_token_kl(s.logprobs, s.ref_logprobs, s.response_mask, "k1").sum(-1)  # (B,) measured KL, k1
    mean_kl = float(seq_kl.mean())
    check_finite(mean_kl, "kl (mean sequence KL(pi || pi_ref), nats)", cfg.max_kl)
    if cfg.whiten_rewards:
        rewards = whiten(rewards, s.response_mask, shift_mean=False)
    advantages, returns = gae(rewards, s.values, s.response_mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, s.response_mask)
    with timer(t, "update"):
        upd = ppo_update(state.policy, state.critic, state.optimizer, s, advantages, returns, cfg, state.generator)
    state.controller.update(mean_kl, cfg.batch_size)
    row = {
        "iteration": len(state.history),
        "score": float(s.raw_scores.mean()),
        "reward": float((rewards * s.response_mask).sum(-1).mean()),
        "kl": mean_kl,
        "kl_penalty": float(kl.sum(-1).mean()),
        "beta": beta,
        "entropy": upd["entropy"],
        "approx_kl": upd["approx_kl"],
        "clipfrac": upd["clipfrac"],
        "vf_clipfrac": upd["vf_clipfrac"],
        "pg_loss": upd["pg_loss"],
        "vf_loss": upd["vf_loss"],
        "explained_variance": float(explained_variance(s.values, returns, s.response_mask)),
        "response_length": float(s.response_mask.sum(-1).mean()),
        "eos_fraction": float(s.has_eos.to(s.logprobs.dtype).mean()),
    }
    if gold_fn is not None:
        gold = gold_fn(s)
        golds = gold if isinstance(gold, dict) else {"": gold}
        row.update({f"gold_{k}" if k else "gold": float(v.float().mean()) for k, v in golds.items()})
    row.update({f"time_{k}": v for k, v in t.items()})
    state.history.append(row)
    state.last_samples = s
    return row


def train_ppo(state: PPOState, tokenizer, prompts, score_fn, cfg: PPOConfig, gold_fn=None, log_path=None,
              callback: Callable[[PPOState, dict], None] | None = None, *, resume: bool = False,
              checkpoint_path=None, checkpoint_every: int | None = None,
              max_steps: int | None = None) -> list[dict]:
    """cfg.n_iterations of `ppo_iteration`, each on cfg.batch_size prompts drawn uniformly (with
    replacement) from `prompts` with the state's generator. Each row is appended to `log_path`
    (JSONL) as soon as it exists, then `callback(state, row)` is called (e.g. to evaluate the
    updated policy at a checkpoint; it must not draw from state.generator). If an iteration fails
    (NaN score, NaN loss, KL above max_kl, mismatched masks), a row {"iteration", "stopped":
    message} is appended, the rows so far are kept, and the error is re-raised. Returns
    state.history.

    Checkpoints and resume: with checkpoint_path, `save_ppo` runs every checkpoint_every
    iterations and after the last one of this call; max_steps stops the run once the state holds
    that many rows in all. resume=True continues the state's run (one loaded by `resume_ppo`):
    the cfg.n_iterations - len(state.history) remaining iterations, keeping the first
    len(state.history) rows of log_path. resume=False (the default) runs cfg.n_iterations
    iterations on a fresh log."""
    check_prompts(prompts)
    done = len(state.history)
    n = cfg.n_iterations - done if resume else cfg.n_iterations
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
            raise ValueError(f"max_steps must be an int >= 0 or None, got {max_steps!r}")
        n = min(n, max_steps - done)
    end = done + max(n, 0)

    def step(_):
        idx = torch.randint(len(prompts), (cfg.batch_size,), generator=state.generator,
                            device=state.generator.device).tolist()
        return ppo_iteration(state, tokenizer, [prompts[i] for i in idx], score_fn, cfg, gold_fn)

    def after(row):
        k = len(state.history)
        if checkpoint_path is not None and (k == end or (checkpoint_every and k % checkpoint_every == 0)):
            save_ppo(state, checkpoint_path)
        if callback is not None:
            callback(state, row)

    run_loop(step, max(n, 0), log_path=log_path, resume_step=done if resume else None, first_index=done,
             callback=after)
    return state.history


def save_ppo(state: PPOState, path):
    """Checkpoint the run: policy and critic weights, the shared Adam, the RNG states and the
    state's generator, the KL controller's beta, the frozen score normalization and the history
    (the reference is not saved: it is the frozen initial policy, rebuilt by the caller)."""
    models = torch.nn.ModuleDict({"policy": state.policy, "critic": state.critic})
    return save_checkpoint(path, models, state.optimizer, step=len(state.history), generator=state.generator,
                           extra={"history": state.history, "beta": state.controller.value,
                                  "score_shift": state.score_shift, "score_scale": state.score_scale})


def resume_ppo(state: PPOState, path) -> PPOState:
    """Load a `save_ppo` checkpoint into a freshly built state (`init_ppo(policy, cfg,
    ref_model=the original reference)`); then `train_ppo(..., resume=True)` continues the run."""
    models = torch.nn.ModuleDict({"policy": state.policy, "critic": state.critic})
    info = load_checkpoint(path, models, state.optimizer, generator=state.generator)
    extra = info["extra"] or {}
    state.history = list(extra.get("history", []))
    state.controller.value = extra["beta"]
    state.score_shift, state.score_scale = extra["score_shift"], extra["score_scale"]
    return state
