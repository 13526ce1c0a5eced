"""Policy-gradient losses: REINFORCE (lessons 01 and 04) and PPO's clipped losses (lesson 07).

Every loss returns a scalar to MINIMIZE: the negative of the surrogate objective whose gradient is
the policy gradient.
"""
from __future__ import annotations

import torch

from ..checks import as_float_mask, check_finite, check_like, check_tensor
from ..kl import k1, k2, k3
from ..masks import masked_mean


def reinforce_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """REINFORCE surrogate: -mean(A * log pi(a)) over the counted entries.

    The gradient of this loss is minus the log-derivative-trick estimate of grad E[R]:
    -(1/N) sum_i A_i grad log pi(a_i).

    logprobs:   (B,) log pi(a_i) of sampled actions, or (B, T) per-token log-probs.
    advantages: same shape as `logprobs`, or (B,) per sequence (broadcast over T). Treated as
                constants: they are detached here, so a baseline that depends on the parameters
                cannot leak gradient.
    mask:       None, or (B, T) with 1 on tokens that count. The mean is over all counted tokens
                in the batch (a "token-level" mean; lesson 13 compares the other normalizers).
    """
    check_tensor(logprobs, "logprobs", floating=True)
    check_tensor(advantages, "advantages", floating=True)
    if logprobs.ndim not in (1, 2):
        raise ValueError(f"logprobs must be (B,) or (B, T), got shape {tuple(logprobs.shape)}")
    if advantages.shape != logprobs.shape:
        if logprobs.ndim == 2 and advantages.shape == logprobs.shape[:1]:
            advantages = advantages[:, None].expand_as(logprobs)
        else:
            raise ValueError(
                f"advantages must have shape {tuple(logprobs.shape)} (or (B,) = "
                f"{tuple(logprobs.shape[:1])} per sequence), got {tuple(advantages.shape)}"
            )
    if mask is not None and logprobs.ndim == 1 and mask.shape != logprobs.shape:
        raise ValueError(f"mask must have shape {tuple(logprobs.shape)}, got {tuple(mask.shape)}")
    return -masked_mean(advantages.detach() * logprobs, mask)


def _token_inputs(x, name, like, m):
    return check_like(x, name, like, m)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimize.

        ratio_t = exp(logprobs_t - old_logprobs_t) = pi_theta(a_t|s_t) / pi_old(a_t|s_t)
        loss    = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))
                = -mean_t min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t)

    logprobs:     (B,) or (B, T) log pi_theta of the sampled actions/tokens (carries the gradient).
    old_logprobs: same shape, log pi_old from the rollout (detached here).
    advantages:   same shape, or (B,) per sequence (broadcast over T); detached here.
    mask:         None or (B, T) / (B,), 1 on the tokens that count.
    clip_eps:     eps; None switches clipping off (the plain importance-sampled surrogate).
    Normalization: the masked mean over all counted tokens of the batch (a token-level mean), so
    micro-batches must be weighted by their token counts to reproduce the full-batch gradient.

    Returns (loss, stats), stats detached 0-dim tensors:
      approx_kl    mean of k3 = (ratio - 1) - log ratio, an unbiased estimate of KL(pi_old || pi_theta)
                   (samples come from pi_old; cleanrl's `approx_kl`);
      approx_kl_k2 mean of (log ratio)^2 / 2 (old TRL's `approx_kl`), approx_kl_k1 mean of -log ratio;
      clipfrac     fraction of counted tokens whose clipped term is active (their gradient is 0):
                   ratio > 1 + eps with A > 0, or ratio < 1 - eps with A < 0 (old TRL's definition;
                   cleanrl's counts |ratio - 1| > eps regardless of the sign of A);
      ratio_mean, ratio_max.
    NaN/inf inputs on counted tokens raise ValueError; a non-finite loss raises FloatingPointError.
    """
    check_tensor(logprobs, "logprobs", floating=True)
    if logprobs.ndim not in (1, 2):
        raise ValueError(f"logprobs must be (B,) or (B, T), got shape {tuple(logprobs.shape)}")
    m = torch.ones_like(logprobs) if mask is None else as_float_mask(mask, logprobs)
    _token_inputs(logprobs, "logprobs", logprobs, m)
    old_logprobs = _token_inputs(old_logprobs, "old_logprobs", logprobs, m).detach()
    check_tensor(advantages, "advantages", floating=True)
    if logprobs.ndim == 2 and advantages.shape == logprobs.shape[:1]:
        advantages = advantages[:, None].expand_as(logprobs)
    advantages = _token_inputs(advantages, "advantages", logprobs, m).detach()
    if clip_eps is not None and not (0 < clip_eps < 1):
        raise ValueError(f"clip_eps must be in (0, 1) or None, got {clip_eps}")

    # zero the log-ratio on padding so that exp() of garbage cannot overflow there
    log_ratio = torch.where(m > 0, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    if clip_eps is None:
        per_token = unclipped
        clipped_active = torch.zeros_like(m)
    else:
        clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
        per_token = torch.maximum(unclipped, clipped)  # pessimistic bound, Eq. 7
        clipped_active = (clipped > unclipped).to(m.dtype)
    loss = masked_mean(per_token, m)
    check_finite(loss, "ppo_policy_loss")
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean(k3(log_ratio), m),
            "approx_kl_k2": masked_mean(k2(log_ratio), m),
            "approx_kl_k1": masked_mean(k1(log_ratio), m),
            "clipfrac": masked_mean(clipped_active, m),
            "ratio_mean": masked_mean(ratio, m),
            "ratio_max": torch.where(m > 0, ratio, torch.zeros_like(ratio)).max(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, dict]:
    """PPO's clipped value loss (as in openai/baselines, lm-human-preferences and old TRL):

        v_clipped = old_values + clip(values - old_values, -eps, +eps)
        loss      = 0.5 * mean_t max((values - R_t)^2, (v_clipped - R_t)^2)

    The 0.5 makes the gradient (v - R) (and is why TRL's vf_coef = 0.1 multiplies 0.5 * MSE).
    values: (B,) or (B, T), the critic's current predictions (carry the gradient).
    old_values, returns: same shape, from the rollout and from GAE (detached here).
    mask: None or the shape of values. clip_eps None: the plain 0.5 * MSE.
    Normalization: masked mean over the counted tokens. Note that the clip is in the *units of
    the return*: eps = 0.2 is tight when rewards are large, which is one reason to whiten them.

    Returns (loss, stats) with vf_clipfrac (fraction where the clipped branch is the larger,
    i.e. the gradient is 0) and value_mse (unclipped mean squared error), detached.
    """
    check_tensor(values, "values", floating=True)
    m = torch.ones_like(values) if mask is None else as_float_mask(mask, values)
    _token_inputs(values, "values", values, m)
    old_values = _token_inputs(old_values, "old_values", values, m).detach()
    returns = _token_inputs(returns, "returns", values, m).detach()
    if clip_eps is not None and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
    zero = torch.zeros_like(values)
    values_m = torch.where(m > 0, values, zero)  # garbage on padding cannot reach the loss
    old_m = torch.where(m > 0, old_values, zero)
    ret_m = torch.where(m > 0, returns, zero)
    err_unclipped = (values_m - ret_m) ** 2
    if clip_eps is None:
        per_token = err_unclipped
        active = torch.zeros_like(m)
    else:
        v_clipped = old_m + torch.clamp(values_m - old_m, -clip_eps, clip_eps)
        err_clipped = (v_clipped - ret_m) ** 2
        per_token = torch.maximum(err_unclipped, err_clipped)
        active = (err_clipped > err_unclipped).to(m.dtype)
    loss = 0.5 * masked_mean(per_token, m)
    check_finite(loss, "ppo_value_loss")
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean(active, m), "value_mse": masked_mean(err_unclipped, m)}
    return loss, {k: v.detach() for k, v in stats.items()}
