"""Advantage estimators: GAE, whitening, and the group baselines of GRPO / Dr. GRPO / RLOO.

Derived in notebooks/06_gae.ipynb (GAE, whitening, explained variance, truncation) and used in
lessons 07-08 (PPO); the group baselines are compared in lesson 13.

Conventions. Tensors are (B, T) per token unless stated otherwise; a mask is 1.0 (or True) on the
tokens that count (the response) and 0 on padding, on either side. Everything returned here is a
training *target*: inputs are detached, so no gradient flows through an advantage or a return.
"""
from __future__ import annotations

import torch

from .checks import as_float_mask, check_tensor
from .masks import masked_mean, masked_sum


def _check_finite_where(x: torch.Tensor, m: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(torch.where(m > 0, x, torch.zeros_like(x))).all()):
        raise ValueError(f"{name} must be finite on the masked-in entries, got NaN or inf")


def _bt_inputs(rewards, values, mask):
    check_tensor(rewards, "rewards", ndim=2, floating=True)
    check_tensor(values, "values", ndim=2, floating=True)
    if values.shape != rewards.shape:
        raise ValueError(
            f"values must have the shape of rewards {tuple(rewards.shape)}, got {tuple(values.shape)}"
        )
    m = torch.ones_like(rewards) if mask is None else as_float_mask(mask, rewards)
    rewards, values = rewards.detach(), values.detach()
    _check_finite_where(rewards, m, "rewards")
    _check_finite_where(values, m, "values")
    if bool(((rewards != 0) & (m == 0)).any()):
        raise ValueError(
            "rewards must be 0 where mask is 0: a reward placed on padding would be silently "
            "dropped (put the terminal reward on the last masked-in token)"
        )
    return rewards, values, m


def _check_last_values(last_values, rewards):
    if last_values is None:
        return torch.zeros_like(rewards[:, 0])
    check_tensor(last_values, "last_values", floating=True)
    if last_values.shape != rewards.shape[:1]:
        raise ValueError(
            f"last_values must have shape (B,) = {tuple(rewards.shape[:1])}, got {tuple(last_values.shape)}"
        )
    if not bool(torch.isfinite(last_values).all()):
        raise ValueError("last_values must be finite, got NaN or inf")
    return last_values.detach().to(rewards.dtype)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    last_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2015, "High-dimensional continuous
    control using generalized advantage estimation", Eqs. 11-16).

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)                       (TD residual)
        A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}
                = delta_t + gamma * lam * A_{t+1}                          (computed backwards)
        returns_t = A_t + V(s_t)                                           (the value target)

    rewards, values: (B, T). values[:, t] = V(s_t), the value of the state *before* token t.
    mask:        None (all ones) or (B, T), 1 on the tokens that count. Masked-out positions are
                 skipped: "the next state" of a token is the next masked-in token of its row, so
                 right padding, left padding and variable lengths all work. Rewards must be 0 on
                 masked-out positions (a ValueError otherwise); values there are ignored.
    last_values: None or (B,). The value after the last masked-in token of each row. None means
                 0: the episode *terminated* there (an EOS was sampled, or the response ended), which
                 is the RLHF case. If a row was *truncated* (cut by a length or rollout limit while
                 the episode would go on), pass V(s_next) for it: treating a truncation as a
                 termination silently biases the last advantages downwards by about
                 gamma * V(s_next) (lesson 06 measures it).
    gamma, lam:  in [0, 1]. lam = 0 gives the TD residual, lam = 1 the discounted Monte-Carlo
                 return minus V(s_t).

    Returns (advantages, returns), both (B, T), 0 on masked-out positions, detached.
    """
    rewards, values, m = _bt_inputs(rewards, values, mask)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    next_value = _check_last_values(last_values, rewards)  # (B,)
    next_adv = torch.zeros_like(next_value)  # (B,)
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        on = m[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(on, adv, torch.zeros_like(adv))
        next_value = torch.where(on, values[:, t], next_value)  # padding is transparent
        next_adv = torch.where(on, adv, next_adv)
    returns = (advantages + values) * m
    return advantages, returns


def discounted_returns(
    rewards: torch.Tensor,
    mask: torch.Tensor | None = None,
    gamma: float = 1.0,
    last_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward-to-go G_t = sum_{l >= 0} gamma^l r_{t+l} over the masked-in tokens of each row.

    Same shapes, mask and `last_values` conventions as `gae` (G_t gets gamma^(k) * last_value added
    when a row is truncated). Equals `gae(..., lam=1)` returns for any values. Returns (B, T).
    """
    check_tensor(rewards, "rewards", ndim=2, floating=True)
    return gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0, last_values=last_values)[0]


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked-in entries of the whole tensor.

    var is the *unbiased* (Bessel-corrected) masked variance and eps = 1e-8, as in old TRL's
    `whiten` (`torch.var`). lm-human-preferences' `whiten` used `tf.nn.moments`, the population
    variance (divide by n): its output is this one times sqrt(n / (n - 1)). With `shift_mean=False` the mean is added back (only the scale
    changes): used to rescale rewards without moving their mean. Masked-out entries are returned
    as 0. Any shape; mask None or the shape of x. Needs at least two masked-in entries.
    """
    check_tensor(x, "x", floating=True)
    m = torch.ones_like(x) if mask is None else as_float_mask(mask, x)
    _check_finite_where(x, m, "x")
    n = m.sum()
    if n < 2:
        raise ValueError(f"whiten needs at least two masked-in entries, got {int(n)}")
    mean = masked_mean(x, m)
    var = masked_sum((x - mean) ** 2, m) / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def _grouped(rewards, group_size, name="rewards"):
    check_tensor(rewards, name, ndim=1, floating=True)
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (a baseline needs other samples), got {group_size!r}")
    n = rewards.shape[0]
    if n == 0 or n % group_size != 0:
        raise ValueError(
            f"{name} must hold a positive multiple of group_size={group_size} entries "
            f"(contiguous groups), got {n}"
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return rewards.detach().view(-1, group_size)  # (B, G)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024; Dr. GRPO, Liu et al. 2025).

    rewards: (B*G,) with the G samples of each prompt contiguous. Returns (B*G,).
    scale="group": (r - mean_group) / (std_group + eps)      (GRPO)
    scale="batch": (r - mean_group) / (std_batch + eps)      (std over all B*G rewards)
    scale="none":  r - mean_group                             (Dr. GRPO)
    std is the *unbiased* (Bessel-corrected, divide by G-1) standard deviation and eps = 1e-4,
    matching TRL's GRPOTrainer default (`scale_rewards`, `nanstd`, `+ 1e-4`). With the population
    std (divide by G), as some write-ups do, advantages are larger by sqrt(G/(G-1)).
    A group whose rewards are all equal gets advantages 0 (not NaN), thanks to eps.
    """
    r = _grouped(rewards, group_size)
    centered = r - r.mean(dim=1, keepdim=True)  # (B, G)
    if scale == "group":
        out = centered / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    elif scale == "batch":
        out = centered / (r.std(unbiased=True) + eps)
    elif scale == "none":
        out = centered
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return out.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): r_i minus the mean of the
    other G-1 rewards of its group, which equals G/(G-1) * (r_i - mean_group).

    rewards: (B*G,) with each group contiguous, G >= 2. Returns (B*G,).
    """
    r = _grouped(rewards, group_size)
    others = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # (B, G)
    return (r - others).reshape(-1)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over the masked-in entries (a critic diagnostic).

    1: the critic predicts the returns perfectly; 0: no better than a constant; < 0: worse than
    a constant. Both variances use the same (population) normalizer, so the choice cancels.
    Returns a 0-dim tensor; NaN when the returns are constant (nothing to explain), as in cleanrl.
    """
    check_tensor(values, "values", floating=True)
    check_tensor(returns, "returns", floating=True)
    if values.shape != returns.shape:
        raise ValueError(
            f"values must have the shape of returns {tuple(returns.shape)}, got {tuple(values.shape)}"
        )
    m = torch.ones_like(returns) if mask is None else as_float_mask(mask, returns)
    values, returns = values.detach(), returns.detach()
    mu_r = masked_mean(returns, m)
    var_r = masked_mean((returns - mu_r) ** 2, m)
    err = returns - values
    var_e = masked_mean((err - masked_mean(err, m)) ** 2, m)
    if var_r == 0:
        return torch.tensor(float("nan"), dtype=returns.dtype)
    return 1 - var_e / var_r
