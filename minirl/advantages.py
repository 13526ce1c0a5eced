"""Advantage estimators: GAE, whitening, and the group baselines of GRPO / Dr. GRPO / RLOO.

Derived in notebooks/06_gae.ipynb (GAE, whitening, explained variance, truncation, the lambda-return
weights and how far credit reaches: `lambda_return_weights`, `credit_share`) and used in lessons 07-08
(PPO); the group baselines are compared in lesson 13.

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


def lambda_return_weights(n_left: int, lam: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Weights of the n-step returns G^(n), n = 1 .. n_left, in the lambda-return of a token with
    `n_left` tokens left in its episode (Sutton & Barto 2018, Eq. 12.3, the truncated lambda-return):

        w_n = (1 - lam) * lam^(n-1)   for n < n_left,     w_{n_left} = lam^(n_left - 1)

    (every G^(n) with n >= n_left is the Monte-Carlo return, so the geometric tail lands on it). They
    sum to 1, and sum_n w_n G^(n)_t is `gae(...)`'s return A_t + V(s_t). Returns (n_left,).
    """
    if not isinstance(n_left, int) or n_left < 1:
        raise ValueError(f"n_left must be an int >= 1, got {n_left!r}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    dtype = dtype or torch.get_default_dtype()
    n = torch.arange(1, n_left + 1, dtype=dtype)
    w = (1 - lam) * torch.tensor(lam, dtype=dtype) ** (n - 1)
    w[-1] = lam ** (n_left - 1)
    return w


def credit_share(
    length: int,
    gamma: float = 1.0,
    lam: float = 0.95,
    critic_quality: float | torch.Tensor = 0.0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """How much of a token's true advantage GAE's expected advantage carries, for one terminal reward.

    Setting: an episode of T = `length` tokens whose only reward comes after the last token, and a
    critic V_hat_t(s) = q_t V_t(s) + b_t that has learned the share q_t of the exact value V_t (of
    the gamma-discounted return) at position t, plus any state-independent numbers b_t
    (q = 0: an untrained or constant critic; q = 1: the exact one). Then, for every state s and token a
    at position t, exactly (lesson 06 derives it; tests/test_credit.py checks it by enumeration):

        E[A_hat_t | s, a] - E_{a' ~ pi}[A_hat_t | s, a'] = c_t * A_t(s, a),
        c_t = gamma^(T-1-t) * kappa_t,
        kappa_t = sum_{m=1}^{T-1-t} (1 - lam) lam^(m-1) q_{t+m} + lam^(T-1-t),

    where A_t(s, a) is the exact advantage of the *undiscounted* return (the one whose gradient RLHF
    wants). kappa is the lambda-return of the qualities with the reward as quality 1 (the weights of
    `lambda_return_weights`), computed backwards as kappa_{T-1} = 1, kappa_t = (1-lam) q_{t+1} +
    lam kappa_{t+1}. q_t itself does not enter c_t: the critic at the token's own state is a baseline.
    With q = 0 this is (gamma lam)^(T-1-t), the share of the terminal reward that reaches token t.
    The critic's own targets carry the same share: E[A_hat_t + V_hat_t(s_t) | s_t = s] = kappa_t V_t(s)
    + (a state-independent number), so fitting the critic to its lambda-targets turns the qualities q
    into kappa (at gamma = 1, credit_share(T, 1, lam, q)); with lam = 1, kappa = 1 in one round.

    critic_quality: a float (the same q at every position) or a (T,) tensor q_0 .. q_{T-1}.
    Returns c, (T,), in `dtype` (default: that of a tensor critic_quality, else torch's default).
    """
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    if dtype is None:
        dtype = critic_quality.dtype if isinstance(critic_quality, torch.Tensor) else torch.get_default_dtype()
    q = torch.as_tensor(critic_quality, dtype=dtype)
    if q.ndim == 0:
        q = q.expand(length)
    if tuple(q.shape) != (length,):
        raise ValueError(f"critic_quality must be a float or have shape ({length},), got {tuple(q.shape)}")
    kappa = torch.empty(length, dtype=dtype)
    kappa[-1] = 1.0
    for t in range(length - 2, -1, -1):
        kappa[t] = (1 - lam) * q[t + 1] + lam * kappa[t + 1]
    steps_left = torch.arange(length - 1, -1, -1, dtype=dtype)
    return torch.tensor(gamma, dtype=dtype) ** steps_left * kappa


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


# ---------------------------------------------------------------- DAPO's reward-side pieces (lesson 13)


def frac_reward_zero_std(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards have (numerically) zero standard deviation: all G samples
    of the prompt got the same reward, so every group-relative advantage is 0 and the group
    contributes no policy gradient (only the KL term, if any).

    rewards: (B*G,) with each group contiguous. Returns a Python float in [0, 1]. "Zero" is TRL's
    `torch.isclose(std, 0)` (|std| <= 1e-8) on the unbiased group std. TRL 1.16's
    `frac_reward_zero_std` metric is this number for scale_rewards "group" and "none"; with
    "batch" TRL tests the batch std instead (so it logs 0 or 1), which is not what this measures.
    """
    r = _grouped(rewards, group_size)
    std = r.std(dim=1, unbiased=True)
    return float(torch.isclose(std, torch.zeros_like(std)).to(torch.float64).mean())


def dynamic_sampling_filter(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO's dynamic sampling (Yu et al. 2025, Eq. 11: keep a prompt only if 0 < #correct < G):
    a (B*G,) bool mask that is False on every sample of a group whose rewards are all exactly
    equal (all right or all wrong, for a 0/1 verifier), True elsewhere.

    rewards: (B*G,) with each group contiguous. Use it to index the batch (`x[keep]`) before the
    update; DAPO then samples more prompts until the batch is full again. Groups stay contiguous
    and whole, so `group_advantages(rewards[keep], group_size)` still works (when any are left).
    """
    r = _grouped(rewards, group_size)
    varied = r.amax(dim=1) > r.amin(dim=1)  # (B,)
    return varied.repeat_interleave(group_size)


def overlong_penalty(lengths, max_completion_length: int, cache_length: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), a reward to ADD to the task reward:

        0                                   if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max   (0 down to -1)
        -1                                  if L > L_max

    lengths: completion lengths in tokens, a 1-D tensor or a list of ints. max_completion_length
    (L_max) and cache_length (L_cache, 0 <= L_cache <= L_max) are ints; cache_length = 0 gives the
    hard penalty (-1 only beyond L_max). Matches TRL's `get_soft_overlong_punishment`. Note that
    with generation capped at L_max no completion is longer than L_max: a truncated one has
    L = L_max and gets -1 only through the linear ramp. Returns a (N,) tensor of the default dtype.
    """
    if isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int) or max_completion_length < 1:
        raise ValueError(f"max_completion_length must be a positive int, got {max_completion_length!r}")
    if isinstance(cache_length, bool) or not isinstance(cache_length, int) or not 0 <= cache_length <= max_completion_length:
        raise ValueError(f"cache_length must be an int in [0, max_completion_length], got {cache_length!r}")
    L = torch.as_tensor(lengths)
    if L.ndim != 1 or L.is_floating_point() and not bool(torch.isfinite(L).all()):
        raise ValueError(f"lengths must be a 1-D sequence of finite lengths, got shape {tuple(L.shape)}")
    if bool((L < 0).any()):
        raise ValueError("lengths must be >= 0")
    L = L.to(torch.get_default_dtype())
    start = max_completion_length - cache_length
    out = torch.zeros_like(L)
    if cache_length > 0:
        ramp = (L > start) & (L <= max_completion_length)
        out = torch.where(ramp, (start - L) / cache_length, out)
    return torch.where(L > max_completion_length, torch.full_like(L, -1.0), out)
