"""Critic-free policy losses: GRPO and its variants (BNPO, Dr. GRPO, DAPO, GSPO) as switches of one
function (lesson 13).

    ratio     w = pi_theta / pi_old, per token (GRPO) or per sequence (GSPO: the geometric mean of
              the token ratios, exp of the masked mean log-ratio)
    per token l_t = -min(w A, clip(w, 1 - eps_low, 1 + eps_high) A) + beta * KL_t
    loss      = an average of l_t over the counted tokens; `loss_type` picks which average.

The advantages come from `minirl.advantages` (`group_advantages`, `rloo_advantages`). Every
convention below is TRL 1.16.0's `GRPOTrainer._compute_loss` (checked to 1e-6, losses and
gradients, in tests/test_trl_grpo_parity.py).
"""
from __future__ import annotations

import torch

from ..checks import as_float_mask, check_finite, check_like, check_tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_LEVELS = ("token", "sequence")


def _same(x, name, like, m, what="logprobs"):
    return check_like(x, name, like, m, what=what, same_dtype=True)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "grpo",
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    importance_level: str = "token",
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_ratio_correction: bool = True,
    max_completion_length: int | None = None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """The GRPO family's clipped surrogate, as a loss to minimize. Returns (loss, stats).

    logprobs:      (B, T) log pi_theta of the sampled completion tokens (carries the gradient);
                   B completions (all groups together), T the padded completion width.
    old_logprobs:  (B, T) log pi_old from the rollout (detached here). On-policy (one update per
                   rollout) pass `logprobs.detach()`: the ratio is then 1 but its gradient is not 0.
    advantages:    (B,) one per completion (broadcast over its tokens), or (B, T); detached here.
    mask:          (B, T), 1 (or True) on the completion tokens that count, 0 on padding (either
                   side). Entries of the other tensors where mask is 0 are ignored (they may be
                   garbage, even NaN); NaN/inf on counted entries raise ValueError.
    ref_logprobs:  (B, T) log pi_ref, needed when beta > 0 (with beta = 0 only the `kl` stat uses it).
    All floating inputs must share logprobs' dtype and shape (a ValueError otherwise).

    Importance weight (`importance_level`):
      "token":    w_{i,t} = exp(logprobs - old_logprobs), one per token (GRPO, DAPO).
      "sequence": w_i = exp(sum_t m (logprobs - old) / |o_i|), the geometric mean of the token
                  ratios (GSPO, Zheng et al. 2025, Eq. 7), one per completion, broadcast to its
                  tokens. The gradient flows through the mean, as in GSPO's Eq. 10:
                  grad w_i = w_i * (1/|o_i|) sum_t grad log pi_theta(o_{i,t}).
    Clipped per-token term: -min(w A, clip(w, 1 - clip_eps, 1 + clip_eps_high) A).
      clip_eps_high None means clip_eps (symmetric). DAPO's clip-higher is clip_eps_high > clip_eps
      (the paper uses 0.2 / 0.28); it is a separate switch, usable with any loss_type, as in TRL.
    KL (beta > 0): the k3 estimator of KL(pi_theta || pi_ref) per token,
      kl_t = exp(ref - logp) - (ref - logp) - 1   (>= 0; Schulman's "approximating KL"),
      added as beta * kl_t * w when kl_ratio_correction (TRL's default `use_bias_correction_kl=True`:
      then, on-policy, the gradient of the KL term is beta * (logp - ref) per token, the unbiased
      reverse-KL gradient), or beta * kl_t without it (DeepSeekMath's GRPO; on-policy gradient
      beta * (1 - exp(ref - logp)), a biased one). With "sequence" the sequence weight multiplies.
    Normalizer (`loss_type`), with l_{i,t} the per-token term and |o_i| = sum_t mask_{i,t}:
      "grpo":    (1/B) sum_i (1/|o_i|) sum_t l_{i,t}    (per-sequence token mean, then mean over
                 sequences: token weight 1/(B |o_i|), so long completions get less per token)
      "bnpo":    sum_{i,t} l_{i,t} / sum_i |o_i|         (mean over all counted tokens)
      "dr_grpo": sum_{i,t} l_{i,t} / (B * max_completion_length)   (a constant; Liu et al. 2025)
      "dapo":    sum_{i,t} l_{i,t} / num_tokens, num_tokens the counted tokens of the WHOLE batch
                 that is accumulated into one optimizer step (TRL's `num_items_in_batch`); None
                 means this call's sum_i |o_i|, i.e. "bnpo". Split a batch into micro-batches,
                 pass the full count to each, and the summed gradients equal the full batch's.
      A row with no counted token contributes 0 (and still counts in B), as in TRL; an all-zero
      mask is an error. max_completion_length is required for "dr_grpo" (ValueError otherwise)
      and must be >= every |o_i|.
    On-policy (w = 1) every loss_type's value is -sum_{i,t} c_{i,t} A_i with the token weights
    c_{i,t} above (-mean advantage for "grpo"), and the gradient with respect to logprobs[i, t] is
    -c_{i,t} A_{i,t} (plus the KL term's): the loss value is ~0 with normalized advantages while
    the gradient is not.

    stats (detached 0-dim tensors): policy_loss (the clipped term alone, same normalizer),
      clip_frac_low (w < 1 - clip_eps with A < 0), clip_frac_high (w > 1 + clip_eps_high with A > 0),
      clip_frac (either; the tokens, or sequences for "sequence", whose gradient the clip zeroes),
      ratio_mean / ratio_min / ratio_max of w, approx_kl (mean k3 of the log-ratio, an estimate of
      KL(pi_old || pi_theta)), num_tokens (sum of mask), and when ref_logprobs is given kl (the
      mean of kl_t over counted tokens, without the ratio) and kl_loss (the KL term beta * ...
      with the same normalizer as the loss, 0 when beta = 0). Token-level statistics are means over
      the counted tokens; sequence-level ones over the B completions (TRL's logging convention).
    """
    check_tensor(logprobs, "logprobs", ndim=2, floating=True)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor of shape {tuple(logprobs.shape)}, got {type(mask).__name__}")
    m = as_float_mask(mask, logprobs)
    _same(logprobs, "logprobs", logprobs, m)
    old_logprobs = _same(old_logprobs, "old_logprobs", logprobs, m).detach()
    check_tensor(advantages, "advantages", floating=True)
    if advantages.shape == logprobs.shape[:1]:
        if advantages.dtype != logprobs.dtype:
            raise ValueError(f"advantages must have the dtype of logprobs ({logprobs.dtype}), got {advantages.dtype}")
        if not bool(torch.isfinite(advantages).all()):
            raise ValueError("advantages must be finite, got NaN or inf")
        adv = advantages.detach()[:, None].expand_as(logprobs)
    elif advantages.shape == logprobs.shape:
        adv = _same(advantages, "advantages", logprobs, m).detach()
    else:
        raise ValueError(
            f"advantages must have shape (B,) = {tuple(logprobs.shape[:1])} or (B, T) = "
            f"{tuple(logprobs.shape)}, got {tuple(advantages.shape)}"
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance_level must be one of {IMPORTANCE_LEVELS}, got {importance_level!r}")
    if not (0 < clip_eps < 1):
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if not eps_high > 0:
        raise ValueError(f"clip_eps_high must be > 0 (or None for clip_eps), got {clip_eps_high}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (the reference model's log-probs of the same tokens)")
    if ref_logprobs is not None:
        ref_logprobs = _same(ref_logprobs, "ref_logprobs", logprobs, m).detach()
    lengths = m.sum(-1)  # (B,) |o_i|
    n_tok = lengths.sum()
    if n_tok == 0:
        raise ValueError("mask has no 1s: no completion token to learn from")
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (the constant normalizer)")
        if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int) or max_completion_length < 1:
            raise ValueError(f"max_completion_length must be a positive int, got {max_completion_length!r}")
        if bool((lengths > max_completion_length).any()):
            raise ValueError(
                f"a row has {int(lengths.max())} counted tokens, more than max_completion_length="
                f"{max_completion_length}: the Dr. GRPO constant must bound every completion length"
            )
    if num_tokens is not None:
        if loss_type != "dapo":
            raise ValueError(f"num_tokens is the 'dapo' normalizer; it has no meaning for loss_type={loss_type!r}")
        if not float(num_tokens) >= float(n_tok):
            raise ValueError(f"num_tokens ({num_tokens}) must be >= this call's counted tokens ({int(n_tok)})")

    zero = torch.zeros_like(logprobs)
    on = m > 0
    lp = torch.where(on, logprobs, zero)  # garbage on padding cannot reach the loss or its gradient
    log_ratio = torch.where(on, lp - old_logprobs, zero)
    a = torch.where(on, adv, zero)
    if importance_level == "token":
        log_w = log_ratio  # (B, T)
    else:
        log_w = (log_ratio.sum(-1) / lengths.clamp(min=1.0))[:, None]  # (B, 1), GSPO
    w = torch.exp(log_w)
    per_token = -torch.minimum(w * a, torch.clamp(w, 1 - clip_eps, 1 + eps_high) * a)  # (B, T) or (B, 1)
    per_token = per_token.expand_as(logprobs)

    def reduce(x):  # the loss_type's average of a (B, T) per-token quantity over the counted tokens
        xm = torch.where(on, x, zero)
        if loss_type == "grpo":
            return (xm.sum(-1) / lengths.clamp(min=1.0)).mean()
        if loss_type == "bnpo":
            return xm.sum() / n_tok
        if loss_type == "dr_grpo":
            return xm.sum() / (logprobs.shape[0] * max_completion_length)
        return xm.sum() / (n_tok if num_tokens is None else torch.as_tensor(num_tokens, dtype=x.dtype))

    policy_loss = reduce(per_token)
    loss = policy_loss
    kl_tok = None
    if ref_logprobs is not None:
        d = torch.where(on, ref_logprobs - lp, zero)
        kl_tok = torch.expm1(d) - d  # k3, >= 0
        kl_term = kl_tok * w if kl_ratio_correction else kl_tok
        kl_loss = reduce(beta * kl_term) if beta > 0 else torch.zeros((), dtype=logprobs.dtype)
        loss = policy_loss + kl_loss
    check_finite(loss, "grpo_loss")

    with torch.no_grad():
        a_raw = adv[:, :1] if advantages.ndim == 1 else a  # (B, 1) or (B, T), as TRL broadcasts them
        low = ((w < 1 - clip_eps) & (a_raw < 0)).to(logprobs.dtype)
        high = ((w > 1 + eps_high) & (a_raw > 0)).to(logprobs.dtype)

        def stat_mean(x):  # one value per sequence: mean over B; per token: mean over counted tokens
            return x.mean() if x.shape[1] == 1 else torch.where(on, x, zero).sum() / n_tok

        wv = w[on] if importance_level == "token" else w[:, 0]
        k3_old = torch.where(on, torch.expm1(log_ratio) - log_ratio, zero)
        stats = {
            "policy_loss": policy_loss,
            "clip_frac_low": stat_mean(low),
            "clip_frac_high": stat_mean(high),
            "clip_frac": stat_mean(torch.maximum(low, high)),
            "ratio_mean": wv.mean(),
            "ratio_min": wv.min(),
            "ratio_max": wv.max(),
            "approx_kl": k3_old.sum() / n_tok,
            "num_tokens": n_tok,
        }
        if kl_tok is not None:
            stats["kl"] = kl_tok.sum() / n_tok
            stats["kl_loss"] = kl_loss
    return loss, {k: v.detach() for k, v in stats.items()}
