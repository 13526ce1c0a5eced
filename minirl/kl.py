"""KL divergence: Monte-Carlo estimators, the exact categorical KL, and KL coefficient controllers.

Derived in notebooks/02_kl_estimators.ipynb (estimators) and used from lesson 04 on; the
controllers are derived in notebooks/08 (RLHF with PPO).

Direction convention. Samples x ~ q, log_r = log p(x) - log q(x), and every estimator targets
KL(q || p) = E_q[log q - log p]. In RLHF q = pi_theta (we sample from the policy) and p = pi_ref,
so `log_r = ref_logprobs - logprobs` and the estimators target KL(pi_theta || pi_ref).
"""
from __future__ import annotations

import torch

from .checks import check_tensor


def k1(log_r: torch.Tensor) -> torch.Tensor:
    """k1 = -log r. Unbiased for KL(q || p), high variance, can be negative. Elementwise, any shape."""
    check_tensor(log_r, "log_r", floating=True)
    return -log_r


def k2(log_r: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2. Biased (exact to second order in log r), low variance, >= 0. Elementwise."""
    check_tensor(log_r, "log_r", floating=True)
    return 0.5 * log_r**2


def k3(log_r: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r. Unbiased (E_q[r] = 1), low variance, >= 0 since log r <= r - 1. Elementwise.

    `expm1` keeps the difference accurate when r is close to 1.
    """
    check_tensor(log_r, "log_r", floating=True)
    return torch.expm1(log_r) - log_r


def categorical_kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """Exact KL(q || p) = sum_v q(v) (log q(v) - log p(v)) over the last dimension.

    logits_q, logits_p: (..., V) unnormalized log-probabilities (log-softmax is applied here).
    Returns (...). Zero-probability entries of q contribute 0; where q > 0 and p = 0 the KL is inf.
    """
    check_tensor(logits_q, "logits_q", floating=True)
    check_tensor(logits_p, "logits_p", floating=True)
    if logits_q.shape != logits_p.shape:
        raise ValueError(
            f"logits_q and logits_p must have the same shape, got {tuple(logits_q.shape)} "
            f"and {tuple(logits_p.shape)}"
        )
    if logits_q.ndim == 0 or logits_q.shape[-1] == 0:
        raise ValueError("logits must have a non-empty last (vocabulary) dimension")
    log_q = torch.log_softmax(logits_q, dim=-1)
    log_p = torch.log_softmax(logits_p, dim=-1)
    q = log_q.exp()
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    return terms.sum(-1)


class FixedKLController:
    """A constant KL coefficient with the same interface as `AdaptiveKLController`."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Proportional control of beta toward a target KL (Ziegler et al. 2019, lm-human-preferences).

        error = clip(current_kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + error * n_steps / horizon)

    `current_kl` is the mean per-sequence KL(pi_theta || pi_ref) in nats; `n_steps` is the number of
    samples (sequences) in the batch just used. Example: beta 0.15, target 6, horizon 10000, a batch
    of 512 with KL 12 gives 0.15 * (1 + 0.2 * 512 / 10000) = 0.151536.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if init_kl_coef <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"init_kl_coef, target and horizon must be > 0, got {init_kl_coef}, {target}, {horizon}"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        current_kl = float(current_kl)
        if current_kl != current_kl:  # NaN
            raise ValueError("current_kl is NaN: the KL controller cannot update")
        if n_steps <= 0:
            raise ValueError(f"n_steps must be a positive number of samples, got {n_steps}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
