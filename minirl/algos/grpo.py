"""GRPO and its critic-free family as one loop (derived in notebooks/13_grpo.ipynb).

Each step: draw `prompts_per_step` prompts, sample `group_size` (G) responses to each, score them
with a reward function (a verifier, a reward model), turn the rewards into one advantage per
response, and take `num_iterations` passes of `minirl.losses.grpo_loss` with an optimizer.
No critic, no per-token rewards: every token of a response gets the response's advantage.

Which method is which (the switches of `GRPOConfig`):

    method                        advantage    scale_rewards  loss_type  other
    REINFORCE, batch-mean baseline "reinforce"  -              "bnpo"     (lesson 04's loss)
    RLOO (Ahmadian et al. 2024)    "rloo"       -              any
    GRPO (Shao et al. 2024)        "grpo"       "group"        "grpo"     beta > 0 in the paper
    Dr. GRPO (Liu et al. 2025)     "grpo"       "none"         "dr_grpo"  beta = 0
    DAPO (Yu et al. 2025)          "grpo"       "group"        "dapo"     clip_eps_high = 0.28,
                                                                          drop_zero_std_groups
    GSPO (Zheng et al. 2025)       "grpo"       "group"        "grpo"     importance_level="sequence"

Advantages (per response, the same on all its tokens; `minirl.advantages`):
    "grpo"       group_advantages(r, G, scale_rewards): (r - group mean) / (group std + 1e-4), or
                 the batch std ("batch"), or no division ("none")
    "rloo"       rloo_advantages(r, G): r minus the mean of the OTHER G - 1 rewards of the group
    "reinforce"  r - the batch mean (one baseline for all prompts; lesson 04)

One step (`grpo_step`, looped by `train_grpo`):
    samples  = rlhf.sample(policy, prompts repeated G times)      G contiguous rows per prompt
    rewards  = score_fn(samples)                                    (B * G,)
    A        = advantages(rewards)                                  (B * G,)
    ref      = response_logprobs(ref_model, ...)                    only if beta > 0 or log_kl
    for num_iterations passes, for each minibatch:
        loss, _ = grpo_loss(logprobs, samples.logprobs, A, mask, loss_type=..., ...)
        step the optimizer (gradient norm clipped at max_grad_norm)

The old log-probs are the sampler's (`samples.logprobs`), so on the first pass the ratio is 1 up to
float rounding and nothing is clipped; clipping acts from the second pass (num_iterations > 1) or
with several minibatches. Logged per step (the names of lesson 08's `train_ppo` where they exist):
reward, reward_std, frac_reward_zero_std, kl (mean sequence k1 estimate of KL(pi_old || pi_ref),
nats, NaN unless beta > 0 or log_kl), loss (means over the optimizer steps of the step), clip_low / clip_high / clipfrac
(grpo_loss's clip_frac_low / _high / clip_frac: the fractions of counted tokens, or of responses
for importance_level="sequence", clipped below 1 - eps with A < 0, above 1 + eps_high with A > 0,
either), optimizer_steps,
grad_norm (before clipping), entropy, response_length (tokens, EOS included), truncated (fraction without EOS),
sampled_tokens (response tokens sampled so far, cumulative), and time_<phase> in seconds.

Tensors follow the policy: rewards and advantages are moved to the dtype and device of the
sampled log-probs, and the state's generator lives on the policy's device. The outer loop is
`minirl.training.run_loop`; `save_grpo` / `resume_grpo` and `train_grpo(..., resume=True)` stop
and resume a run bit for bit (tests/test_algos_shared.py). Bad configurations and inputs raise ValueError; a non-finite reward or loss,
or a KL above max_kl, raises FloatingPointError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..advantages import dynamic_sampling_filter, frac_reward_zero_std, group_advantages, rloo_advantages
from ..checks import check_finite, check_int, check_prompts, check_tensor
from ..lm import response_logprobs
from ..losses import grpo_loss
from ..masks import masked_mean
from ..rollout import Samples, make_generator, make_reference, per_token_kl, sample
from ..training import append_jsonl  # noqa: F401  (kept importable here)
from ..training import load_checkpoint, model_device, run_loop, save_checkpoint
from ..utils import config_dict, timer  # noqa: F401  (config_dict re-exported: the config as a dict)

ADVANTAGES = ("grpo", "rloo", "reinforce")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_LEVELS = ("token", "sequence")


@dataclass
class GRPOConfig:
    """Hyperparameters of the GRPO family. Defaults suit the tiny model on a CPU (lesson 13); the
    values of TRL's GRPOConfig are given in brackets where they differ."""

    n_iterations: int = 20
    """steps: rollout + update cycles"""
    prompts_per_step: int = 8
    """distinct prompts per step; the batch holds prompts_per_step * group_size responses"""
    group_size: int = 8
    """G, responses per prompt (>= 2: a group baseline needs other samples)"""
    max_new_tokens: int = 24
    """completion limit; a response that reaches it without EOS is truncated (and is also
    Dr. GRPO's constant normalizer, TRL's max_completion_length) [256]"""
    temperature: float = 1.0
    """sampling temperature; the trained log-probs are taken at the same temperature"""
    lr: float = 1e-4
    """Adam learning rate [1e-6]"""
    max_grad_norm: float | None = 1.0
    """clip the global gradient norm (None: no clipping)"""
    advantage: str = "grpo"
    """"grpo" (group baseline, scaled by scale_rewards), "rloo" (leave-one-out) or "reinforce"
    (batch-mean baseline)"""
    scale_rewards: str = "group"
    """for advantage="grpo": divide by the group std ("group"), the batch std ("batch") or not at
    all ("none", Dr. GRPO)"""
    loss_type: str = "grpo"
    """normalizer of grpo_loss: "grpo" (mean over responses of the per-response token mean),
    "bnpo" (mean over all tokens of the minibatch), "dr_grpo" (sum / (rows * max_new_tokens)),
    "dapo" (token-level; TRL normalizes by the tokens of the whole batch across processes)"""
    clip_eps: float = 0.2
    """ratio clip epsilon (the lower one when clip_eps_high is set)"""
    clip_eps_high: float | None = None
    """DAPO's clip-higher upper epsilon (0.28 in the paper); None: clip_eps"""
    importance_level: str = "token"
    """"token" (GRPO) or "sequence" (GSPO: the geometric mean of a response's token ratios)"""
    beta: float = 0.0
    """coefficient of the k3 KL(pi || pi_ref) term in the loss [0.0; 0.04 in the GRPO paper]"""
    kl_ratio_correction: bool = True
    """multiply the per-token KL term by the importance ratio (see grpo_loss)"""
    num_iterations: int = 1
    """mu: optimizer passes over each rollout [1]"""
    minibatch_size: int | None = None
    """responses per gradient step (shuffled with the state's generator); None: the whole batch.
    Each minibatch is normalized on its own, as in TRL's per-device losses"""
    drop_zero_std_groups: bool = False
    """DAPO's dynamic-sampling filter without the refill: leave out of the update the groups whose
    rewards are all equal (they have advantage 0 but still count in a token normalizer). A step
    in which every group is equal takes no optimizer step"""
    log_kl: bool = True
    """also run the reference model when beta = 0, to log the KL"""
    max_sampled_tokens: int | None = None
    """train_grpo stops after the step in which this many response tokens have been sampled in
    all (for comparisons at equal sampling cost); None: run n_iterations steps"""
    max_kl: float = 100.0
    """stop the run when the logged mean sequence KL (nats) exceeds this"""
    seed: int = 0
    """seeds the prompt draws, the sampling and the minibatch order"""


def check_config(cfg: GRPOConfig) -> None:
    """Raise ValueError, naming the field, for a configuration that cannot run."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)

    for name in ("n_iterations", "prompts_per_step", "max_new_tokens", "num_iterations"):
        v = getattr(cfg, name)
        need(isinstance(v, int) and v >= 1, f"{name} must be an int >= 1, got {v!r}")
    need(isinstance(cfg.group_size, int) and cfg.group_size >= 2,
         f"group_size must be an int >= 2 (a group baseline needs other samples), got {cfg.group_size!r}")
    need(cfg.advantage in ADVANTAGES, f"advantage must be one of {ADVANTAGES}, got {cfg.advantage!r}")
    need(cfg.scale_rewards in SCALE_REWARDS, f"scale_rewards must be one of {SCALE_REWARDS}, got {cfg.scale_rewards!r}")
    need(cfg.loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, got {cfg.loss_type!r}")
    need(cfg.importance_level in IMPORTANCE_LEVELS,
         f"importance_level must be one of {IMPORTANCE_LEVELS}, got {cfg.importance_level!r}")
    need(0 < cfg.clip_eps < 1, f"clip_eps must be in (0, 1), got {cfg.clip_eps}")
    need(cfg.clip_eps_high is None or cfg.clip_eps_high > 0, f"clip_eps_high must be > 0 or None, got {cfg.clip_eps_high}")
    need(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(cfg.temperature > 0, f"temperature must be > 0 (sampling and log-probs at the same temperature), got {cfg.temperature}")
    need(cfg.beta >= 0, f"beta must be >= 0, got {cfg.beta}")
    need(cfg.max_grad_norm is None or cfg.max_grad_norm > 0, f"max_grad_norm must be > 0 or None, got {cfg.max_grad_norm}")
    batch = cfg.prompts_per_step * cfg.group_size
    if cfg.minibatch_size is not None:
        need(isinstance(cfg.minibatch_size, int) and cfg.minibatch_size >= 1 and batch % cfg.minibatch_size == 0,
             f"minibatch_size must divide the batch prompts_per_step * group_size = {batch}, got {cfg.minibatch_size!r}")
    need(cfg.max_sampled_tokens is None or cfg.max_sampled_tokens >= 1,
         f"max_sampled_tokens must be >= 1 or None, got {cfg.max_sampled_tokens}")


# ---------------------------------------------------------------- advantages


def compute_advantages(rewards: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    """(B * G,) rewards, groups contiguous -> (B * G,) advantages, by cfg.advantage (and
    cfg.scale_rewards for "grpo"); same dtype and device as `rewards`."""
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    if cfg.advantage == "grpo":
        return group_advantages(rewards, cfg.group_size, scale=cfg.scale_rewards)
    if cfg.advantage == "rloo":
        return rloo_advantages(rewards, cfg.group_size)
    if cfg.advantage == "reinforce":
        if rewards.numel() < 2:
            raise ValueError("advantage='reinforce' needs at least 2 rewards for a batch-mean baseline")
        return rewards.detach() - rewards.detach().mean()
    raise ValueError(f"advantage must be one of {ADVANTAGES}, got {cfg.advantage!r}")


# ---------------------------------------------------------------- state and step


@dataclass
class GRPOState:
    """What persists between steps: the models, the optimizer, the generator, the log."""

    policy: object
    ref_model: object
    optimizer: object
    generator: torch.Generator
    history: list = field(default_factory=list)
    last_samples: Samples | None = None
    sampled_tokens: int = 0


def make_optimizer(policy, cfg: GRPOConfig):
    """Adam over the policy's trainable parameters (eps 1e-8, no weight decay)."""
    return torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)


def init_grpo(policy, cfg: GRPOConfig, ref_model=None) -> GRPOState:
    """Check the config, then build the state: the reference is a frozen copy of `policy` unless
    given (it is only run when beta > 0 or log_kl), Adam, and a generator seeded with cfg.seed."""
    check_config(cfg)
    ref_model = make_reference(policy) if ref_model is None else ref_model
    return GRPOState(policy, ref_model, make_optimizer(policy, cfg), make_generator(cfg.seed, model_device(policy)))


def grpo_step(state: GRPOState, tokenizer, prompts, score_fn: Callable[[Samples], torch.Tensor],
              cfg: GRPOConfig) -> dict:
    """One rollout + update on `prompts` (list[str] of length cfg.prompts_per_step; each is
    sampled cfg.group_size times, in contiguous rows). `score_fn(samples) -> (B * G,)` gives one
    reward per response. Returns the logged row (also appended to state.history)."""
    check_config(cfg)
    check_prompts(prompts)
    if len(prompts) != cfg.prompts_per_step:
        raise ValueError(f"prompts must hold prompts_per_step = {cfg.prompts_per_step} prompts, got {len(prompts)}")
    G, t = cfg.group_size, {}
    policy = state.policy
    policy.eval()
    with timer(t, "generate"):
        s = sample(policy, tokenizer, [p for p in prompts for _ in range(G)], cfg.max_new_tokens,
                   cfg.temperature, state.generator)
    n = s.sequences.shape[0]
    with timer(t, "score"):
        raw = score_fn(s)
        check_tensor(raw, "score_fn output", ndim=1)
        if raw.shape[0] != n:
            raise ValueError(f"score_fn must return one reward per response, shape ({n},), got {tuple(raw.shape)}")
        s.raw_scores = raw.detach().to(device=s.logprobs.device, dtype=s.logprobs.dtype)
        bad = (~torch.isfinite(s.raw_scores)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(f"reward is not finite for rows {bad[:8]}: training stopped")
        s.scores = s.raw_scores
    adv = compute_advantages(s.scores, cfg)
    keep = dynamic_sampling_filter(s.scores, G) if cfg.drop_zero_std_groups else torch.ones_like(s.has_eos)
    ref_lp = None
    if cfg.beta > 0 or cfg.log_kl:
        with timer(t, "reference"), torch.no_grad():
            ref_lp = response_logprobs(state.ref_model, s.sequences, s.attention_mask, s.prompt_length,
                                       cfg.temperature) * s.response_mask
            s.ref_logprobs = ref_lp
    kl = float("nan")
    if ref_lp is not None:
        kl = float(per_token_kl(s.logprobs, ref_lp, s.response_mask, "k1").sum(-1).mean())
        check_finite(kl, "kl (mean sequence KL(pi || pi_ref), nats)", cfg.max_kl)

    rows = keep.nonzero().flatten()
    mb = len(rows) if cfg.minibatch_size is None else cfg.minibatch_size
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    sums, n_steps, entropies = {}, 0, []
    with timer(t, "update"):
        policy.train()
        for _ in range(cfg.num_iterations if len(rows) else 0):
            order = rows if cfg.minibatch_size is None else rows[torch.randperm(len(rows), generator=state.generator, device=state.generator.device)]
            for start in range(0, len(order), mb):
                i = order[start:start + mb]
                m = s.response_mask[i]
                logprobs, ent = response_logprobs(policy, s.sequences[i], s.attention_mask[i], s.prompt_length,
                                                  cfg.temperature, return_entropy=True)
                loss, st = grpo_loss(
                    logprobs, s.logprobs[i], adv[i], m, loss_type=cfg.loss_type, clip_eps=cfg.clip_eps,
                    clip_eps_high=cfg.clip_eps_high, importance_level=cfg.importance_level,
                    ref_logprobs=None if cfg.beta == 0 else ref_lp[i], beta=cfg.beta,
                    kl_ratio_correction=cfg.kl_ratio_correction, max_completion_length=cfg.max_new_tokens)
                check_finite(loss, "grpo loss")
                state.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                else:
                    gn = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None))
                state.optimizer.step()
                fr = {"clip_low": st["clip_frac_low"], "clip_high": st["clip_frac_high"], "clipfrac": st["clip_frac"]}
                for k, v in {"loss": loss.detach(), "grad_norm": gn, **fr}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                entropies.append(float(masked_mean(ent.detach(), m)))
                n_steps += 1
    policy.eval()
    tokens = int(s.response_mask.sum())
    state.sampled_tokens += tokens
    r = s.scores.view(-1, G)
    row = {
        "iteration": len(state.history),
        "reward": float(s.scores.mean()),
        "reward_std": float(r.std(-1).mean()),
        "frac_reward_zero_std": frac_reward_zero_std(s.scores, G),
        "kl": kl,
        "loss": sums["loss"] / n_steps if n_steps else 0.0,
        "clip_low": sums["clip_low"] / n_steps if n_steps else 0.0,
        "clip_high": sums["clip_high"] / n_steps if n_steps else 0.0,
        "clipfrac": sums["clipfrac"] / n_steps if n_steps else 0.0,
        "grad_norm": sums["grad_norm"] / n_steps if n_steps else 0.0,
        "entropy": sum(entropies) / len(entropies) if entropies else float("nan"),
        "response_length": float(s.response_mask.sum(-1).double().mean()),
        "truncated": float((~s.has_eos).double().mean()),
        "optimizer_steps": n_steps,
        "sampled_tokens": state.sampled_tokens,
    }
    row.update({f"time_{k}": v for k, v in t.items()})
    state.history.append(row)
    state.last_samples = s
    return row


def train_grpo(state: GRPOState, tokenizer, prompts, score_fn, cfg: GRPOConfig, log_path=None,
               callback: Callable[[GRPOState, dict], None] | None = None, *, resume: bool = False,
               checkpoint_path=None, checkpoint_every: int | None = None,
               max_steps: int | None = None) -> list[dict]:
    """Up to cfg.n_iterations of `grpo_step`, each on cfg.prompts_per_step prompts drawn uniformly
    (with replacement) from `prompts` with the state's generator; stops early after the step in
    which state.sampled_tokens reaches cfg.max_sampled_tokens. Each row is appended to
    `log_path` (JSONL) as soon as it exists, then `callback(state, row)` is called (it must not
    draw from state.generator). A failing step (non-finite reward or loss, KL above max_kl)
    appends {"iteration", "stopped": message} to the log and re-raises. Returns state.history.

    Checkpoints and resume: with checkpoint_path, `save_grpo` runs every checkpoint_every steps
    and after the last step of this call; max_steps stops the run once the state holds that many
    rows in all (a planned stop). resume=True continues the state's run (one loaded by
    `resume_grpo`): it takes the cfg.n_iterations - len(state.history) remaining steps and keeps
    the first len(state.history) rows of log_path, so the log and the weights end as those of a
    run that never stopped. resume=False (the default) runs cfg.n_iterations steps on a fresh log."""
    check_config(cfg)
    check_prompts(prompts)
    done = len(state.history)
    n = cfg.n_iterations - done if resume else cfg.n_iterations
    if max_steps is not None:
        check_int(max_steps, "max_steps", minimum=0)
        n = min(n, max_steps - done)
    if checkpoint_every is not None:
        check_int(checkpoint_every, "checkpoint_every")
    end = done + max(n, 0)

    def step(_):
        idx = torch.randint(len(prompts), (cfg.prompts_per_step,), generator=state.generator,
                            device=state.generator.device).tolist()
        return grpo_step(state, tokenizer, [prompts[i] for i in idx], score_fn, cfg)

    def stop(row):
        return cfg.max_sampled_tokens is not None and state.sampled_tokens >= cfg.max_sampled_tokens

    def after(row):
        k = len(state.history)
        if checkpoint_path is not None and (k == end or stop(row) or
                                            (checkpoint_every is not None and k % checkpoint_every == 0)):
            save_grpo(state, checkpoint_path)
        if callback is not None:
            callback(state, row)

    run_loop(step, max(n, 0), log_path=log_path, resume_step=done if resume else None, first_index=done,
             callback=after, stop=stop)
    return state.history


def save_grpo(state: GRPOState, path):
    """Checkpoint the run: policy weights, Adam, the RNG states and the state's generator, the
    history and the sampled-token count (the reference is not saved: it is the frozen initial
    policy, rebuilt by the caller)."""
    return save_checkpoint(path, state.policy, state.optimizer, step=len(state.history), generator=state.generator,
                           extra={"history": state.history, "sampled_tokens": state.sampled_tokens})


def resume_grpo(state: GRPOState, path) -> GRPOState:
    """Load a `save_grpo` checkpoint into a freshly built state (`init_grpo(policy, cfg,
    ref_model=the original reference)`); then `train_grpo(..., resume=True)` continues the run."""
    info = load_checkpoint(path, state.policy, state.optimizer, generator=state.generator)
    extra = info["extra"] or {}
    state.history, state.sampled_tokens = list(extra.get("history", [])), int(extra.get("sampled_tokens", 0))
    return state
