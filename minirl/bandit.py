"""A K-armed bandit, a softmax policy over its arms, and the KL-regularized optimum.

Derived in notebooks/01_bandits_reinforce.ipynb. The optimum pi* = pi_ref exp(r / beta) / Z is
the same closed form that lesson 10 turns into DPO.
"""
from __future__ import annotations

import torch
from torch import nn

from .checks import check_probability_vector, check_tensor


class Bandit:
    """K arms; pulling arm a pays a reward drawn from N(means[a], noise_std^2).

    means: (K,) expected reward of each arm. noise_std: standard deviation of the reward noise
    (0 gives deterministic rewards).
    """

    def __init__(self, means, noise_std: float = 1.0):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 1 or means.numel() < 2:
            raise ValueError(f"means must be a 1-D list of at least 2 arm rewards, got shape {tuple(means.shape)}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.means = means
        self.noise_std = float(noise_std)

    @property
    def n_arms(self) -> int:
        return self.means.numel()

    def pull(self, arms: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rewards (B,) float64 for integer arm indices (B,) in [0, K)."""
        check_tensor(arms, "arms")
        if arms.dtype.is_floating_point or arms.dtype == torch.bool:
            raise ValueError(f"arms must be integer indices, got dtype {arms.dtype}")
        if arms.numel() and (int(arms.min()) < 0 or int(arms.max()) >= self.n_arms):
            raise ValueError(
                f"arm indices must lie in [0, {self.n_arms - 1}], got min {int(arms.min())}, max {int(arms.max())}"
            )
        noise = torch.randn(arms.shape, generator=generator, dtype=torch.float64)
        return self.means[arms] + self.noise_std * noise


class SoftmaxPolicy(nn.Module):
    """pi_theta(a) = softmax(theta)_a over K arms, with one logit per arm as the parameters."""

    def __init__(self, n_arms: int, init_logits: torch.Tensor | None = None, dtype=torch.float64):
        super().__init__()
        if init_logits is None:
            init_logits = torch.zeros(n_arms, dtype=dtype)
        init_logits = torch.as_tensor(init_logits, dtype=dtype)
        if init_logits.shape != (n_arms,):
            raise ValueError(f"init_logits must have shape ({n_arms},), got {tuple(init_logits.shape)}")
        self.logits = nn.Parameter(init_logits.clone())

    def probs(self) -> torch.Tensor:
        """(K,) action probabilities."""
        return torch.softmax(self.logits, dim=-1)

    def log_prob(self, arms: torch.Tensor) -> torch.Tensor:
        """(B,) log pi(a) for arm indices (B,)."""
        n = self.logits.numel()
        if arms.numel() and (int(arms.min()) < 0 or int(arms.max()) >= n):
            raise ValueError(f"arm indices must lie in [0, {n - 1}]")
        return torch.log_softmax(self.logits, dim=-1)[arms]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) arm indices drawn from pi (no gradient flows through sampling)."""
        with torch.no_grad():
            return torch.multinomial(self.probs(), n, replacement=True, generator=generator)


def kl_regularized_optimum(ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """pi*(a) = pi_ref(a) exp(r(a) / beta) / Z, the maximizer of E_pi[r] - beta KL(pi || pi_ref).

    ref_probs: (K,) a probability vector; rewards: (K,) expected reward per arm; beta > 0.
    Computed in log space (log pi_ref + r / beta, then a softmax) so large r / beta does not overflow.
    """
    check_probability_vector(ref_probs, "ref_probs")
    check_tensor(rewards, "rewards", floating=True)
    if rewards.shape != ref_probs.shape:
        raise ValueError(f"rewards must have shape {tuple(ref_probs.shape)}, got {tuple(rewards.shape)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return torch.softmax(torch.log(ref_probs) + rewards / beta, dim=-1)


def kl_regularized_objective(
    probs: torch.Tensor, ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float
) -> torch.Tensor:
    """J(pi) = E_pi[r] - beta KL(pi || pi_ref), exact for a categorical policy over K arms."""
    check_probability_vector(probs, "probs")
    check_probability_vector(ref_probs, "ref_probs")
    if not (probs.shape == ref_probs.shape == rewards.shape):
        raise ValueError(
            f"probs, ref_probs and rewards must share one shape, got {tuple(probs.shape)}, "
            f"{tuple(ref_probs.shape)}, {tuple(rewards.shape)}"
        )
    kl = torch.where(probs > 0, probs * (probs.log() - ref_probs.log()), torch.zeros_like(probs)).sum()
    return (probs * rewards).sum() - beta * kl
