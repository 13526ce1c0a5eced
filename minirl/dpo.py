"""DPO on a language model: sequence log-probs of chosen and rejected responses, one training step,
a short training loop, implicit-reward accuracy, and the reward-KL measurement of a trained policy.

Derived in notebooks/10_dpo.ipynb (Rafailov et al. 2023, "Direct Preference Optimization"). The
loss itself is `minirl.losses.dpo_loss`; the bandit case, where DPO's optimum can be checked
against RLHF's pi* exactly, is `minirl.dpo_bandit`.

    encode_preferences(tok, rows)          chosen and rejected texts in ONE (2B, T) batch
    sequence_logps(model, batch)           log pi(y | x) summed over each row's response tokens (N,)
    concatenated_logps(model, batch)       (chosen (B,), rejected (B,)) from one forward over 2B rows
    dpo_gradient_weights(r_w, r_l)         sigma(r_hat_l - r_hat_w), DPO's per-pair gradient weight
    dpo_step(policy, opt, batch, ...)      one AdamW step on dpo_loss, returns detached statistics
    train_dpo(policy, ref, tok, rows, cfg) epochs of minibatches; reference log-probs computed once
                                           (`minirl.algos.dpo.train_preference` with loss="dpo")
    implicit_rewards(policy, ref, tok, rows, beta)   r_hat = beta log(pi / pi_ref) on held-out pairs
    evaluate_samples(policy, ref, tok, prompts, gold_fn)   gold reward and KL(pi || pi_ref) of samples

Batch layout (TRL's "concatenated forward"): rows 0..B-1 hold prompt + chosen response, rows
B..2B-1 prompt + rejected response, right-padded to one width. `response_mask` is 1 exactly on the
response tokens (their EOS included), so the prompt and the padding never count. One forward pass
serves both halves, which halves the number of model calls and puts chosen and rejected through
the same kernel shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import check_finite, check_tensor
from .lm import masked_sequence_logprobs, sequence_logprobs, sequence_sum
from .losses import dpo_loss
from .losses.preference import DPO_LOSS_TYPES
from .tokenizer import encode_prompt_response
from .utils import config_dict  # noqa: F401  (re-exported: the config as a plain dict)

__all__ = [
    "DPOConfig",
    "encode_preferences",
    "sequence_logps",
    "concatenated_logps",
    "dpo_gradient_weights",
    "dpo_step",
    "train_dpo",
    "implicit_rewards",
    "evaluate_samples",
]


@dataclass
class DPOConfig:
    """Hyperparameters of `train_dpo` (one flat config). Defaults suit the tiny model on a CPU."""

    beta: float = 0.1
    """KL strength of the implicit objective; r_hat = beta log(pi / pi_ref) [DPO paper: 0.1]"""
    loss_type: str = "sigmoid"
    """"sigmoid" (DPO), "hinge" (SLiC) or "ipo", as in `minirl.losses.dpo_loss`"""
    label_smoothing: float = 0.0
    """conservative DPO: the assumed fraction of flipped labels (sigmoid only)"""
    lr: float = 1e-3
    """AdamW learning rate (the tiny model; GPT-2-scale DPO uses about 1e-6 to 5e-7)"""
    epochs: int = 2
    """passes over the preference pairs"""
    batch_size: int = 32
    """pairs per optimizer step (the forward pass sees 2 * batch_size sequences)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient-norm clip; math.inf disables it"""
    max_len: int = 96
    """token budget per prompt + response (longer responses lose their end)"""
    seed: int = 0
    """seed of the generator that shuffles the pairs each epoch"""
    log_every: int = 5
    """record the mean statistics of the last `log_every` steps (and the held-out ones) this often"""
    # Speed options of train_dpo (issue 9), off by default so that the lessons' numbers stay bit
    # for bit; see `minirl.algos.dpo.PreferenceConfig` for what each does.
    group_by_length: bool = False
    """length-grouped minibatches: pairs of similar length share a step (less padding)"""
    reference_batch: int | None = None
    """reference log-probs of the rows sorted by length, this many sequences per forward
    (None: chunks of 512 rows in data order)"""
    response_only_head: bool = False
    """the LM head on the response positions only (`minirl.lm.masked_sequence_logprobs`)"""


def _check_config(cfg: DPOConfig) -> None:
    if not cfg.beta > 0:
        raise ValueError(f"beta must be > 0, got {cfg.beta}")
    if cfg.loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {cfg.loss_type!r}")
    for name in ("epochs", "batch_size", "log_every", "max_len"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    for name in ("group_by_length", "response_only_head"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(cfg, name)!r}")
    rb = cfg.reference_batch
    if rb is not None and (isinstance(rb, bool) or not isinstance(rb, int) or rb < 1):
        raise ValueError(f"reference_batch must be a positive int or None, got {rb!r}")


# ------------------------------------------------------------------------------ batches


def encode_preferences(tokenizer, rows, max_len: int = 96) -> dict:
    """Tokenize preference rows {"prompt", "chosen", "rejected"} (extra keys ignored; a
    `datasets.Dataset` works too) into one right-padded batch.

    Returns {"input_ids", "attention_mask", "response_mask"}, each (2B, T) long: rows 0..B-1 are
    prompt + chosen, rows B..2B-1 prompt + rejected (EOS appended to every response).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: need at least one preference pair")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in rows[0]]
    if missing:
        raise ValueError(f"preference rows need keys prompt, chosen, rejected; missing {missing}")
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    return encode_prompt_response(tokenizer, prompts, responses, max_len=max_len)


def _select(batch: dict, idx: torch.Tensor) -> dict:
    """Rows `idx` of a (N, T) batch, with all-padding columns on the right dropped."""
    out = {k: batch[k][idx] for k in ("input_ids", "attention_mask", "response_mask")}
    width = max(int(out["attention_mask"].sum(-1).max()), 2)
    return {k: v[:, :width] for k, v in out.items()}


def _check_batch(batch: dict) -> None:
    if not isinstance(batch, dict) or not {"input_ids", "attention_mask", "response_mask"} <= set(batch):
        raise ValueError("batch must be a dict with input_ids, attention_mask, response_mask (see encode_preferences)")
    ids = batch["input_ids"]
    check_tensor(ids, "input_ids", ndim=2)
    for k in ("attention_mask", "response_mask"):
        if batch[k].shape != ids.shape:
            raise ValueError(f"{k} must have the shape of input_ids {tuple(ids.shape)}, got {tuple(batch[k].shape)}")
    if bool((batch["response_mask"].bool() & ~batch["attention_mask"].bool()).any()):
        raise ValueError("response_mask is 1 on a padded position (attention_mask 0): the masks disagree")


def sequence_logps(model, batch: dict, response_only: bool = False) -> torch.Tensor:
    """log pi(y | x) = sum_t response_mask_t * log pi(y_t | x, y_<t) for every row: (N, T) -> (N,).

    One teacher-forced forward (`minirl.lm.sequence_logprobs`), then the masked sum over the
    response tokens. response_only: the LM head on the response positions only
    (`minirl.lm.masked_sequence_logprobs`; the same sums up to float rounding). Gradients flow;
    wrap in torch.no_grad() for the reference."""
    _check_batch(batch)
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    if response_only:
        logprobs = masked_sequence_logprobs(model, ids, am, rm)  # (N, T), 0 outside the response
    else:
        logprobs = sequence_logprobs(model, ids, am)  # (N, T)
    return sequence_sum(logprobs, rm)  # (N,)


def concatenated_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) sequence log-probs from ONE forward over the (2B, T) batch of
    `encode_preferences` (first half chosen, second half rejected)."""
    _check_batch(batch)
    n = batch["input_ids"].shape[0]
    if n % 2:
        raise ValueError(f"a preference batch has 2B rows (B chosen, then B rejected), got {n} rows")
    logps = sequence_logps(model, batch)  # (2B,)
    return logps[: n // 2], logps[n // 2:]


@torch.no_grad()
def _all_logps(model, batch: dict, chunk: int = 512, by_length: bool = False,
               response_only: bool = False) -> torch.Tensor:
    """sequence_logps over a large (N, T) batch in chunks of rows, no gradient: (N,).

    Default: chunks of `chunk` rows in data order. by_length: the rows sorted by length (longest
    first) before chunking, so that each chunk, cut to its own longest row, holds little padding;
    the result is put back in data order. response_only: the LM head on the response positions
    only (`minirl.lm.masked_sequence_logprobs`). Both change float rounding only."""
    n = batch["input_ids"].shape[0]
    if by_length:
        order = torch.sort(batch["attention_mask"].sum(-1).cpu(), descending=True, stable=True).indices
    else:  # the default, as the lessons run it
        order = torch.arange(n)
    out = None
    for s in range(0, n, chunk):
        idx = order[s:s + chunk]
        lp = sequence_logps(model, _select(batch, idx.to(batch["input_ids"].device)), response_only)
        if out is None:
            out = lp.new_zeros(n)
        out[idx.to(out.device)] = lp
    return out


# ------------------------------------------------------------------------------ the step


def dpo_gradient_weights(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """sigma(r_hat_l - r_hat_w): (B,), (B,) -> (B,). The DPO (sigmoid) loss's gradient with respect
    to the log-prob of y_w is -beta * weight / B, and with respect to y_l it is +beta * weight / B:
    pairs the implicit reward ranks wrongly get weight near 1, pairs it already ranks right by a
    wide margin get weight near 0 (Rafailov et al. 2023, Section 4)."""
    check_tensor(chosen_rewards, "chosen_rewards", ndim=1, floating=True)
    if rejected_rewards.shape != chosen_rewards.shape:
        raise ValueError(f"rejected_rewards must have shape {tuple(chosen_rewards.shape)}, got {tuple(rejected_rewards.shape)}")
    return torch.sigmoid(rejected_rewards - chosen_rewards)


def dpo_step(policy, optimizer, batch: dict, ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             cfg: DPOConfig) -> dict:
    """One optimizer step on `minirl.losses.dpo_loss` for a (2B, T) preference batch.

    ref_chosen_logps, ref_rejected_logps: (B,) reference sequence log-probs of the same pairs
    (computed once, without gradient). Returns floats: loss, chosen_logps, rejected_logps (means of
    log pi over the batch), chosen_rewards, rejected_rewards (means of r_hat), margin, accuracy
    (fraction with r_hat_w > r_hat_l), grad_weight (mean sigma(r_hat_l - r_hat_w)).
    Raises FloatingPointError on a non-finite loss.
    """
    _check_config(cfg)
    policy.train()
    chosen, rejected = concatenated_logps(policy, batch)  # (B,), (B,)
    loss, stats = dpo_loss(chosen, rejected, ref_chosen_logps, ref_rejected_logps, beta=cfg.beta,
                           label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)
    check_finite(loss, "DPO loss")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if math.isfinite(cfg.max_grad_norm):
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    optimizer.step()
    w = dpo_gradient_weights(stats["chosen_rewards"], stats["rejected_rewards"])
    return {
        "loss": float(loss.detach()),
        "chosen_logps": float(chosen.detach().mean()),
        "rejected_logps": float(rejected.detach().mean()),
        "chosen_rewards": float(stats["chosen_rewards"].mean()),
        "rejected_rewards": float(stats["rejected_rewards"].mean()),
        "margin": float(stats["reward_margin"]),
        "accuracy": float(stats["reward_accuracy"]),
        "grad_weight": float(w.mean()),
    }


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def implicit_rewards(policy, ref_model, tokenizer, rows, beta: float, max_len: int = 96, batch: dict | None = None,
                     ref_logps: torch.Tensor | None = None) -> dict:
    """Implicit rewards r_hat = beta (log pi(y|x) - log pi_ref(y|x)) of every chosen and rejected
    response in `rows` (B pairs), e.g. held-out pairs.

    Returns {"chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps" (B,) each,
    "accuracy" (fraction of pairs with r_hat_w > r_hat_l, a tie counting 1/2, against the labels),
    "margin" (mean r_hat_w - r_hat_l)}; with "gold_chosen"/"gold_rejected" in the rows also
    "gold_accuracy": the same against the gold order (the labels may be noisy).
    `batch` / `ref_logps` (2B,) may be passed to skip re-encoding / the reference forward."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    rows = list(rows)
    batch = encode_preferences(tokenizer, rows, max_len) if batch is None else batch
    was_training = policy.training
    policy.eval()
    logps = _all_logps(policy, batch)  # (2B,)
    policy.train(was_training)
    ref = _all_logps(ref_model, batch) if ref_logps is None else ref_logps
    B = len(rows)
    if logps.shape != (2 * B,) or ref.shape != (2 * B,):
        raise ValueError(f"batch / ref_logps must hold 2 * {B} rows, got {tuple(logps.shape)} and {tuple(ref.shape)}")
    r = beta * (logps - ref)  # (2B,)
    rw, rl = r[:B], r[B:]
    d = rw - rl
    out = {"chosen_rewards": rw, "rejected_rewards": rl, "chosen_logps": logps[:B], "rejected_logps": logps[B:],
           "accuracy": float(((d > 0).double() + 0.5 * (d == 0).double()).mean()), "margin": float(d.mean())}
    if "gold_chosen" in rows[0]:
        sign = torch.tensor([math.copysign(1.0, x["gold_chosen"] - x["gold_rejected"]) for x in rows], dtype=d.dtype)
        dg = d * sign
        out["gold_accuracy"] = float(((dg > 0).double() + 0.5 * (dg == 0).double()).mean())
    return out


def train_dpo(policy, ref_model, tokenizer, rows, cfg: DPOConfig | None = None, eval_rows=None,
              callback: Callable | None = None) -> list[dict]:
    """Train `policy` in place by DPO on preference rows against the frozen `ref_model`.

    The reference log-probs of every pair are computed once up front (TRL's precompute_ref_logps):
    the reference never changes, so recomputing them each step would only cost time. Each epoch
    shuffles the pairs (generator seeded with cfg.seed) and takes AdamW steps of `dpo_step` on
    minibatches of cfg.batch_size pairs. Every cfg.log_every steps a row is recorded: step, epoch,
    the means of `dpo_step`'s statistics over those steps, and, with eval_rows, the held-out
    "eval_accuracy", "eval_margin", "eval_chosen_logps", "eval_rejected_logps" (means) from
    `implicit_rewards`. A row at step 0 (before training) is recorded too. Returns the rows.

    callback(step, policy), if given, is called after every optimizer step (step = 1, 2, ...), e.g.
    to evaluate checkpoints along training; it must not change the policy's weights. The policy is
    put back in training mode after it returns, so a callback may sample (policy.eval()).
    """
    from .algos.dpo import DPO_STEP_KEYS, PreferenceConfig, init_preference, train_preference

    cfg = cfg or DPOConfig()
    _check_config(cfg)
    pcfg = PreferenceConfig(loss="dpo", beta=cfg.beta, dpo_loss_type=cfg.loss_type,
                            label_smoothing=cfg.label_smoothing, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            max_grad_norm=cfg.max_grad_norm if math.isfinite(cfg.max_grad_norm) else None,
                            batch_size=cfg.batch_size, sampling="epochs", epochs=cfg.epochs, reference="precompute",
                            max_len=cfg.max_len, seed=cfg.seed, group_by_length=cfg.group_by_length,
                            reference_batch=cfg.reference_batch, response_only_head=cfg.response_only_head)
    state = init_preference(policy, ref_model, tokenizer, rows, pcfg)  # the reference scores every pair once
    ev = None
    if eval_rows is not None:
        eval_rows = list(eval_rows)
        ev_batch = encode_preferences(tokenizer, eval_rows, cfg.max_len)
        ev = (eval_rows, ev_batch, _all_logps(ref_model, ev_batch))

    def eval_stats():
        if ev is None:
            return {}
        e = implicit_rewards(policy, ref_model, tokenizer, ev[0], cfg.beta, batch=ev[1], ref_logps=ev[2])
        return {"eval_accuracy": e["accuracy"], "eval_margin": e["margin"],
                "eval_chosen_logps": float(e["chosen_logps"].mean()),
                "eval_rejected_logps": float(e["rejected_logps"].mean())}

    history, buf = [{"step": 0, "epoch": 0, **eval_stats()}], []

    def after(state, row):
        buf.append(row)
        if callback is not None:
            callback(state.step, policy)
            policy.train()
        if state.step % cfg.log_every == 0:
            mean = {k: sum(d[k] for d in buf) / len(buf) for k in DPO_STEP_KEYS}
            history.append({"step": state.step, "epoch": row["epoch"], **mean, **eval_stats()})
            buf.clear()

    train_preference(state, pcfg, callback=after)  # leaves the policy in eval mode
    return history


@torch.no_grad()
def evaluate_samples(policy, ref_model, tokenizer, prompts, gold_fn: Callable[[str, str], float],
                     max_new_tokens: int = 16, temperature: float = 1.0, generator=None) -> dict:
    """Where a policy sits on the reward-KL plane: sample one response per prompt (repeat prompts
    for more), score it with gold_fn(prompt, response), and estimate KL(pi || pi_ref) per sequence
    by k1 on the samples (`minirl.rlhf.sequence_kl`: sum over the response of log pi - log pi_ref,
    both at `temperature`).

    Returns floats {"gold", "gold_sem", "kl", "kl_sem", "length", "logp", "truncated"}: means over
    the samples, their standard errors, the mean response length in tokens (EOS included), the mean
    sequence log-prob log pi(y | x) of the samples under the policy that drew them (minus a
    Monte-Carlo estimate of the sequence entropy), and the fraction of samples that hit
    max_new_tokens without EOS (truncated: their length and KL are censored at the cap). A wrapper
    of `minirl.evaluation.evaluate_policy` (a bare str as prompts is rejected)."""
    from .evaluation import evaluate_policy  # lesson 08's sampler and KL, shared so the points compare

    def gold(s):
        return torch.tensor([float(gold_fn(p, r)) for p, r in zip(s.prompts, s.responses)], dtype=torch.float64)

    out, s = evaluate_policy(policy, ref_model, tokenizer, prompts, {"gold": gold}, max_new_tokens=max_new_tokens,
                             temperature=temperature, generator=generator, min_samples=1, return_samples=True)
    return {"gold": out["gold"], "gold_sem": out["gold_sem"], "kl": out["kl"], "kl_sem": out["kl_sem"],
            "length": float(s.response_mask.sum(-1).mean()),  # in the mask's float32, as this function always did
            "logp": out["logp"], "truncated": out["truncated"]}
