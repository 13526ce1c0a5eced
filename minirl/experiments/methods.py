"""One step of each method over the shared layer, and the run loop of the experiment scripts.

    Task                     prompts (train, held-out) and a score_fn(samples) -> (B,)
    setup(cfg, task, ...)    models, optimizer, generators, reference (and critic) on the device
    STEPS[method](state, cfg)   one step -> the row of this process (phases timed)
    run(cfg, load_task)      the loop: resume, steps, JSONL log, checkpoints, final evaluation

Each step is the package's algorithm written as phases, so that each phase can be timed and the
update can run in micro-batches under bf16 autocast:

    method     generate                      score        reference          update (loss)
    ppo        1 sample per prompt (policy)  score_fn     pi_ref + critic    rlhf: KL-penalized
                                                                             rewards, GAE,
                                                                             ppo_policy_loss +
                                                                             vf_coef ppo_value_loss
    rloo/grpo  G per prompt (policy)         score_fn     pi_ref             algos.grpo advantages,
                                                                             losses.grpo_loss
    dpo        2 per prompt from pi_ref,     score_fn     pi_ref log-probs   losses.dpo_loss on the
               the better one is "chosen"    (labels)     of the pairs       pairs (DPO paper, IMDB)
    best_of_n  n per prompt from pi_ref      score_fn     -                  - (bon.best_of_n)

The update goes through `minirl.training.optimizer_step` with micro-batches weighted by their
units (tokens for the token-mean losses, responses or pairs otherwise), so the gradient is the
full batch's whatever micro_batch_size is. With several processes each one samples its share of
the prompts; the loss of each is scaled by (its units * world size / all units), so that DDP's
mean over processes is again the mean over all units of the global batch.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import training
from ..advantages import gae, whiten
from ..algos import grpo as grpo_mod
from ..bon import best_of_n, best_of_n_kl
from ..evaluation import evaluate_policy
from ..kl import AdaptiveKLController, FixedKLController
from ..lm import response_logprobs
from ..losses import dpo_loss, grpo_loss, ppo_policy_loss, ppo_value_loss
from ..paths import RUNS_DIR, relative
from ..rlhf import critic_values, make_critic
from ..rollout import kl_penalized_rewards, make_generator, make_reference, per_token_kl, sample
from ..utils import config_dict, progress
from . import common


@dataclass
class Task:
    """What a method optimizes: `prompts` to train on, `eval_prompts` held out, and
    `score(samples) -> (B,)` the reward of each sampled response."""

    name: str
    prompts: list
    eval_prompts: list
    score: Callable
    tokenizer: object
    policy: object


@dataclass
class RunState:
    policy: object                 # trained (DDP-wrapped with several processes)
    ref: object                    # frozen pi_ref
    optimizer: object | None
    data_gen: torch.Generator      # CPU, the same on every process: prompt draws, minibatch order
    sample_gen: torch.Generator    # on the device, different per process: sampling
    dist: common.Dist
    task: Task
    model_config: object
    critic: object | None = None
    controller: object | None = None
    step: int = 0
    flops: dict = field(default_factory=dict)


def amp(device):
    """bf16 autocast on CUDA, nothing elsewhere (`training.autocast_dtype_for`)."""
    dtype = training.autocast_dtype_for(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def setup(cfg: common.ExperimentConfig, task: Task, dist: common.Dist) -> RunState:
    """The models of `cfg.method` around task.policy: reference copy, critic (ppo), optimizer,
    controller, generators; wrapped for several processes."""
    policy = task.policy.to(dist.device)
    ref = make_reference(policy)
    critic, controller, opt = None, None, None
    if cfg.method == "ppo":
        critic = make_critic(policy, "zero", seed=cfg.seed).to(dist.device)
        params = list(policy.parameters()) + list(critic.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)  # rlhf.make_optimizer's settings
        controller = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, 10000.0) if cfg.adaptive_kl
                      else FixedKLController(cfg.kl_coef))
        policy, critic, opt = dist.prepare(policy, critic, opt)
    elif cfg.method in ("grpo", "rloo"):
        opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)  # as grpo.make_optimizer
        policy, opt = dist.prepare(policy, opt)
    elif cfg.method == "dpo":
        opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)  # as dpo.train_dpo
        policy, opt = dist.prepare(policy, opt)
    return RunState(policy, ref, opt, torch.Generator().manual_seed(cfg.seed),
                    make_generator(cfg.seed + 1000 * dist.rank, dist.device), dist, task,
                    dist.unwrap(policy).config, critic, controller)


# ------------------------------------------------------------------------------ pieces


def draw_prompts(state: RunState, n: int) -> list[str]:
    """n prompts drawn with replacement by the shared generator (the same on every process),
    then this process's share."""
    idx = torch.randint(len(state.task.prompts), (n,), generator=state.data_gen).tolist()
    return state.dist.shard([state.task.prompts[i] for i in idx])


def score(state: RunState, s) -> torch.Tensor:
    raw = state.task.score(s)
    raw = torch.as_tensor(raw).detach().to(device=s.logprobs.device, dtype=s.logprobs.dtype)
    if raw.shape != (s.sequences.shape[0],):
        raise ValueError(f"score_fn must return one reward per response ({s.sequences.shape[0]},), "
                         f"got {tuple(raw.shape)}")
    if not bool(torch.isfinite(raw).all()):
        raise FloatingPointError("a reward is not finite: training stopped")
    return raw


def ref_logprobs(state: RunState, s, rows=None) -> torch.Tensor:
    seq, attn, m = s.sequences, s.attention_mask, s.response_mask
    if rows is not None:
        seq, attn, m = seq[rows], attn[rows], m[rows]
    with torch.no_grad():
        return response_logprobs(state.ref, seq, attn, s.prompt_length) * m


def count_flops(state: RunState, attn: torch.Tensor, kind: str = "train", copies: int = 1) -> None:
    """Add the model FLOPs of a pass over the real tokens of `attn` (B, W) to state.flops[kind]."""
    tokens = float(attn.sum())
    state.flops[kind] = state.flops.get(kind, 0.0) + copies * tokens * common.flops_per_token(
        state.model_config, attn.shape[1], kind)
    state.flops[kind + "_tokens"] = state.flops.get(kind + "_tokens", 0.0) + copies * tokens


def accumulate(state: RunState, cfg, rows: torch.Tensor, units: torch.Tensor, loss_on_rows) -> dict:
    """One optimizer step over the batch rows `rows` in micro-batches of cfg.micro_batch_size,
    each weighted by its units (units[r] per row), through training.optimizer_step."""
    micro = [rows[i:i + cfg.micro_batch_size] for i in range(0, len(rows), cfg.micro_batch_size)]
    w = [float(units[m].sum()) for m in micro]
    local = sum(w)
    total = state.dist.all_sum(local)
    c = local * state.dist.world_size / total if total > 0 else 1.0

    def loss_fn(model, idx):
        loss, stats = loss_on_rows(model, idx)
        return loss * c, stats

    device = state.dist.device
    out = training.optimizer_step(state.policy, state.optimizer, micro, loss_fn, weights=w,
                                  max_grad_norm=cfg.max_grad_norm, move_to_device=False,
                                  autocast_dtype=training.autocast_dtype_for(device))
    out["loss"] = out["loss"] / c
    return out


def minibatches(state: RunState, n: int, size: int) -> list[torch.Tensor]:
    """A shuffled split of range(n) into minibatches of `size` (0: one batch)."""
    order = torch.randperm(n, generator=state.data_gen)
    size = n if size == 0 else size
    return [order[i:i + size] for i in range(0, n, size)]


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if vals else float("nan")


# ------------------------------------------------------------------------------ steps


def step_group(state: RunState, cfg, t: common.PhaseTimer) -> dict:
    """RLOO or GRPO: G samples per prompt, group advantages (algos.grpo), grpo_loss."""
    G, dev = cfg.group_size, state.dist.device
    gcfg = grpo_mod.GRPOConfig(group_size=G, advantage="rloo" if cfg.method == "rloo" else "grpo",
                               loss_type=cfg.loss_type, beta=cfg.kl_coef, clip_eps=cfg.clip_eps, lr=cfg.lr,
                               max_new_tokens=cfg.max_new_tokens)
    prompts = draw_prompts(state, cfg.prompts_per_step)
    policy = state.dist.unwrap(state.policy)
    with t("generate"), amp(dev):
        s = sample(policy, state.task.tokenizer, [p for p in prompts for _ in range(G)], cfg.max_new_tokens,
                   cfg.temperature, state.sample_gen)
    with t("score"):
        rewards = score(state, s)
        adv = grpo_mod.compute_advantages(rewards, gcfg)
    with t("reference"), amp(dev):
        ref_lp = ref_logprobs(state, s)
    count_flops(state, s.attention_mask, "forward")
    kl = float(per_token_kl(s.logprobs, ref_lp, s.response_mask, "k1").sum(-1).mean())
    token_units = cfg.loss_type in ("bnpo", "dapo")
    units = s.response_mask.sum(-1) if token_units else torch.ones(len(prompts) * G, device=dev)

    def loss_on_rows(model, i):
        lp = response_logprobs(model, s.sequences[i], s.attention_mask[i], s.prompt_length, cfg.temperature)
        count_flops(state, s.attention_mask[i], "train")
        return grpo_loss(lp, s.logprobs[i], adv[i], s.response_mask[i], loss_type=cfg.loss_type,
                         clip_eps=cfg.clip_eps, ref_logprobs=ref_lp[i] if cfg.kl_coef > 0 else None,
                         beta=cfg.kl_coef, max_completion_length=cfg.max_new_tokens)

    outs = []
    with t("update"):
        state.policy.train()
        for rows in minibatches(state, len(prompts) * G, cfg.minibatch_size):
            outs.append(accumulate(state, cfg, rows, units, loss_on_rows))
        state.policy.eval()
    return {"reward": float(rewards.mean()), "kl": kl, "loss": _mean(outs, "loss"),
            "grad_norm": _mean(outs, "grad_norm"), "clipfrac": _mean(outs, "clip_frac"),
            "optimizer_steps": len(outs), "samples": len(prompts) * G,
            "generated_tokens": int(s.response_mask.sum()),
            "response_length": float(s.response_mask.sum(-1).double().mean())}


def step_ppo(state: RunState, cfg, t: common.PhaseTimer) -> dict:
    """PPO-RLHF (lesson 08): one sample per prompt, critic values, KL-penalized per-token
    rewards, GAE, whitened advantages, ppo_epochs passes of the clipped policy + value loss."""
    dev = state.dist.device
    prompts = draw_prompts(state, cfg.prompts_per_step)
    policy, critic = state.dist.unwrap(state.policy), state.dist.unwrap(state.critic)
    with t("generate"), amp(dev):
        s = sample(policy, state.task.tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, state.sample_gen)
    with t("score"):
        scores = score(state, s)
    with t("reference"), amp(dev), torch.no_grad():
        ref_lp = ref_logprobs(state, s)
        critic.eval()
        values = critic_values(critic, s.sequences, s.attention_mask, s.prompt_length).to(ref_lp.dtype) * s.response_mask
    count_flops(state, s.attention_mask, "forward", copies=2)
    beta = state.controller.value
    rewards, _ = kl_penalized_rewards(scores, s.logprobs, ref_lp, s.response_mask, beta)
    kl = float(per_token_kl(s.logprobs, ref_lp, s.response_mask, "k1").sum(-1).mean())
    adv, ret = gae(rewards, values, s.response_mask, 1.0, 0.95)
    adv = whiten(adv, s.response_mask)
    units = s.response_mask.sum(-1)

    def loss_on_rows(model, i):
        m = s.response_mask[i]
        lp = response_logprobs(model, s.sequences[i], s.attention_mask[i], s.prompt_length, cfg.temperature)
        pg, st = ppo_policy_loss(lp, s.logprobs[i], adv[i], m, cfg.clip_eps)
        v = critic_values(state.critic, s.sequences[i], s.attention_mask[i], s.prompt_length)
        vf, vst = ppo_value_loss(v, values[i], ret[i], m, 0.2)
        count_flops(state, s.attention_mask[i], "train", copies=2)
        return pg + cfg.vf_coef * vf, {"pg_loss": pg.detach(), "vf_loss": vf.detach(), "clipfrac": st["clipfrac"]}

    outs = []
    with t("update"):
        state.policy.train()
        state.critic.train()
        for _ in range(cfg.ppo_epochs):
            for rows in minibatches(state, len(prompts), cfg.minibatch_size):
                outs.append(accumulate(state, cfg, rows, units, loss_on_rows))
        state.policy.eval()
        state.critic.eval()
    state.controller.update(kl, cfg.prompts_per_step)
    return {"reward": float(scores.mean()), "kl": kl, "beta": beta, "loss": _mean(outs, "loss"),
            "pg_loss": _mean(outs, "pg_loss"), "vf_loss": _mean(outs, "vf_loss"),
            "grad_norm": _mean(outs, "grad_norm"), "clipfrac": _mean(outs, "clipfrac"),
            "optimizer_steps": len(outs), "samples": len(prompts), "generated_tokens": int(s.response_mask.sum()),
            "response_length": float(s.response_mask.sum(-1).double().mean())}


def step_dpo(state: RunState, cfg, t: common.PhaseTimer) -> dict:
    """DPO as in the DPO paper's IMDB experiment: two responses per prompt from pi_ref, the one
    the reward prefers is "chosen" (ties dropped), then dpo_loss against pi_ref's log-probs."""
    dev = state.dist.device
    prompts = draw_prompts(state, cfg.prompts_per_step)
    with t("generate"), amp(dev):
        s = sample(state.ref, state.task.tokenizer, [p for p in prompts for _ in range(2)], cfg.max_new_tokens,
                   cfg.temperature, state.sample_gen)
    with t("score"):
        r = score(state, s).view(-1, 2)
        win = (r[:, 1] > r[:, 0]).long()  # first on ties; tied pairs are dropped below
        keep = (r[:, 0] != r[:, 1]).nonzero().flatten()
        pair = torch.arange(r.shape[0], device=r.device)[keep]
        chosen, rejected = 2 * pair + win[keep], 2 * pair + 1 - win[keep]
    n = len(pair)
    with t("reference"), amp(dev):
        both = torch.cat([chosen, rejected])
        ref_lp = ref_logprobs(state, s, both).sum(-1)
        ref_c, ref_r = ref_lp[:n], ref_lp[n:]
    count_flops(state, s.attention_mask[both], "forward")

    def loss_on_rows(model, j):
        rows = torch.cat([chosen[j], rejected[j]])  # one forward over chosen then rejected
        lp = (response_logprobs(model, s.sequences[rows], s.attention_mask[rows], s.prompt_length, cfg.temperature)
              * s.response_mask[rows]).sum(-1)
        count_flops(state, s.attention_mask[rows], "train")
        k = len(j)
        loss, st = dpo_loss(lp[:k], lp[k:], ref_c[j], ref_r[j], beta=cfg.kl_coef)
        return loss, {"accuracy": st["reward_accuracy"], "margin": st["reward_margin"]}

    outs = []
    with t("update"):
        if n:
            state.policy.train()
            for rows in minibatches(state, n, cfg.minibatch_size):
                outs.append(accumulate(state, cfg, rows, torch.ones(n, device=dev), loss_on_rows))
            state.policy.eval()
    return {"reward": float(r.mean()), "kl": None, "loss": _mean(outs, "loss"), "accuracy": _mean(outs, "accuracy"),
            "margin": _mean(outs, "margin"), "grad_norm": _mean(outs, "grad_norm"), "pairs": n,
            "optimizer_steps": len(outs), "samples": 2 * len(prompts), "generated_tokens": int(s.response_mask.sum()),
            "response_length": float(s.response_mask.sum(-1).double().mean())}


def step_best_of_n(state: RunState, cfg, t: common.PhaseTimer) -> dict:
    """Best-of-n from pi_ref, no training: the mean reward of the best of the first k samples of
    each prompt for k = 1, 2, 4, ..., n, and the analytic KL bound log n - (n - 1) / n."""
    n, dev = cfg.group_size, state.dist.device
    prompts = draw_prompts(state, cfg.prompts_per_step)
    with t("generate"), amp(dev):
        s = sample(state.ref, state.task.tokenizer, [p for p in prompts for _ in range(n)], cfg.max_new_tokens,
                   cfg.temperature, state.sample_gen)
    with t("score"):
        r = score(state, s)
    row = {"reward": float(r[best_of_n(r, n)].mean()), "kl": best_of_n_kl(n), "reward_sample": float(r.mean()),
           "samples": len(prompts) * n, "generated_tokens": int(s.response_mask.sum()),
           "response_length": float(s.response_mask.sum(-1).double().mean())}
    k = 1
    while k <= n:
        sub = r.view(-1, n)[:, :k].reshape(-1)
        row[f"reward_best_of_{k}"] = float(sub[best_of_n(sub, k)].mean())
        k *= 2
    return row


STEPS = {"ppo": step_ppo, "grpo": step_group, "rloo": step_group, "dpo": step_dpo, "best_of_n": step_best_of_n}


# ------------------------------------------------------------------------------ checkpoints


def _checkpoint_model(state: RunState):
    if state.critic is not None:
        return torch.nn.ModuleDict({"policy": state.dist.unwrap(state.policy), "critic": state.dist.unwrap(state.critic)})
    if state.optimizer is None:
        return torch.nn.Module()  # best-of-n trains nothing: only the RNG states are saved
    return state.dist.unwrap(state.policy)


def save(state: RunState, out: Path) -> None:
    """out/checkpoint.pt (process 0: models, optimizer, RNG states, the shared data generator,
    its sample generator, the KL controller's beta); other processes write their sample
    generator to out/rng-rank<r>.pt."""
    extra = {"sample_gen": state.sample_gen.get_state(),
             "beta": state.controller.value if state.controller is not None else None}
    if state.dist.main:
        training.save_checkpoint(out / "checkpoint.pt", _checkpoint_model(state), state.optimizer,
                                 step=state.step, generator=state.data_gen, extra=extra)
    else:
        torch.save(extra, out / f"rng-rank{state.dist.rank}.pt")
    state.dist.barrier()


def load(state: RunState, out: Path) -> int:
    info = training.load_checkpoint(out / "checkpoint.pt", _checkpoint_model(state), state.optimizer,
                                    generator=state.data_gen)
    extra = info["extra"]
    if not state.dist.main:
        extra = torch.load(out / f"rng-rank{state.dist.rank}.pt", weights_only=True)
    state.sample_gen.set_state(extra["sample_gen"])
    if state.controller is not None and extra.get("beta") is not None:
        state.controller.value = extra["beta"]
    state.step = info["step"]
    return state.step


# ------------------------------------------------------------------------------ evaluation


def evaluate(state: RunState, cfg) -> dict:
    """Held-out reward and KL(pi || pi_ref) with standard errors: one fresh sample per held-out
    prompt from the trained policy (minirl.evaluation.evaluate_policy); for best-of-n the best of
    n samples from pi_ref and the analytic KL bound."""
    prompts = state.task.eval_prompts[:cfg.eval_prompts]
    g = make_generator(cfg.seed + 10_000, state.dist.device)
    with amp(state.dist.device):
        if cfg.method != "best_of_n":
            out = evaluate_policy(state.dist.unwrap(state.policy), state.ref, state.task.tokenizer, prompts,
                                  {"reward": lambda s: score(state, s)}, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, generator=g)
            return {k: out[k] for k in ("n", "reward", "reward_sem", "kl", "kl_sem", "length", "truncated")}
        n = cfg.group_size
        s = sample(state.ref, state.task.tokenizer, [p for p in prompts for _ in range(n)], cfg.max_new_tokens,
                   cfg.temperature, g)
        r = score(state, s)
        best = r[best_of_n(r, n)].double()
        return {"n": len(prompts), "reward": float(best.mean()), "reward_sem": float(best.std() / math.sqrt(len(best))),
                "kl": best_of_n_kl(n), "kl_sem": 0.0, "kl_is_bound": True}


# ------------------------------------------------------------------------------ the loop


def default_out_dir(cfg, task_name: str) -> Path:
    return RUNS_DIR / "17" / f"{task_name}-{cfg.preset}-{cfg.method}"


def run(cfg: common.ExperimentConfig, load_task: Callable[[common.ExperimentConfig, common.Dist], Task],
        task_name: str) -> dict:
    """Run `cfg` on the task `load_task(cfg, dist)` builds. Writes to out_dir: config.json, log.jsonl
    (one row per step, after reduction over processes), checkpoint.pt (every checkpoint_every
    steps and at the end), eval.json. Returns {"rows", "eval", "out_dir"}."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if cfg.dtype == "float64" else torch.float32)
    try:
        return _run(cfg, load_task, task_name)
    finally:
        torch.set_default_dtype(before)


def _run(cfg, load_task, task_name) -> dict:
    dist = common.Dist(cfg.device)
    torch.manual_seed(cfg.seed)
    task = load_task(cfg, dist)
    state = setup(cfg, task, dist)
    out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg, task_name)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    if cfg.resume and (out / "checkpoint.pt").exists():
        load(state, out)
        rows = training.start_run_log(log, resume_step=state.step) if dist.main else []
    else:
        if cfg.resume and dist.main:
            print(f"no checkpoint in {relative(out)}: starting from step 0")
        rows = training.start_run_log(log) if dist.main else []
    if dist.main:
        (out / "config.json").write_text(json.dumps(config_dict(cfg), indent=1, sort_keys=True) + "\n")
    peak = common.peak_tflops(dist.device, cfg.peak_tflops)
    step_fn = STEPS[cfg.method]
    quiet = {} if (cfg.progress and dist.main) else {"disable": True}
    bar = progress(range(state.step, cfg.steps), initial=state.step, total=cfg.steps,
                   desc=f"{task_name} {cfg.method}", **quiet)
    for k in bar:
        t = common.PhaseTimer(dist.device)
        state.flops = {}
        with t("step"):
            row = step_fn(state, cfg, t)
        row = {"step": k, "method": cfg.method, **row, "world_size": dist.world_size,
               "update_tokens": state.flops.get("train_tokens", 0.0), "update_flops": state.flops.get("train", 0.0),
               **{f"time_{p}": v for p, v in t.seconds.items()},
               "peak_memory_mib": common.peak_memory_mib(dist.device)}
        for phase in ("generate", "score", "reference", "update"):
            row.setdefault(f"time_{phase}", 0.0)
        row = common.finish_row(common.combine_rows(dist.gather_rows(row)), peak, dist.world_size)
        row = common.nan_to_none(row)
        state.step = k + 1
        if dist.main:
            training.append_jsonl(log, row)
            rows.append(row)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(reward=f"{row['reward']:.3f}" if row.get("reward") is not None else "-",
                                mfu=common.format_mfu(row["mfu"]), refresh=False)
        if (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0) or state.step == cfg.steps:
            save(state, out)
    ev = None
    if cfg.eval_prompts and dist.main:
        ev = common.nan_to_none(evaluate(state, cfg))
        (out / "eval.json").write_text(json.dumps(ev, indent=1, sort_keys=True) + "\n")
    dist.barrier()
    return {"rows": rows, "eval": ev, "out_dir": out, "state": state}
