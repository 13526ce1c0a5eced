"""A K-armed bandit, a softmax policy over its arms, the KL-regularized optimum, and a small
REINFORCE training loop (`train_reinforce`) for the plain and the KL-regularized objective.

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


def expected_reward_gradient(probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Exact grad_theta E_pi[r] for pi = softmax(theta): pi * (r - E_pi[r]), shape (K,).

    probs: (K,) the policy's probabilities; rewards: (K,) expected reward of each arm. Obtained by
    enumerating the arms (lesson 01, Eq. (3)); the reference that sampled estimates are measured
    against.
    """
    check_probability_vector(probs, "probs")
    check_tensor(rewards, "rewards", floating=True)
    if rewards.shape != probs.shape or probs.ndim != 1:
        raise ValueError(
            f"probs and rewards must both be (K,), got {tuple(probs.shape)} and {tuple(rewards.shape)}"
        )
    return probs * (rewards - (probs * rewards).sum())


def train_reinforce(
    bandit: Bandit,
    policy: SoftmaxPolicy,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    beta: float = 0.0,
    ref_probs: torch.Tensor | None = None,
    baseline: str = "ema",
    ema_decay: float = 0.9,
    lr_schedule: str = "linear",
    generator: torch.Generator | None = None,
) -> dict[str, list]:
    """Sampled REINFORCE with plain SGD on the logits of `policy` (updated in place).

    Each step draws `batch_size` arms a_i ~ pi, rewards R_i from `bandit`, and ascends
    (1/B) sum_i (R~_i - b) grad log pi(a_i) through `minirl.losses.reinforce_loss`, where

        R~_i = R_i - beta * (log pi(a_i) - log pi_ref(a_i))      (detached; lesson 01, Eq. (15))

    is the per-sample reward of the KL-regularized objective E_pi[r] - beta KL(pi || pi_ref)
    (KL direction: policy first). With beta = 0 it is plain REINFORCE on E_pi[r].

    baseline:    "none", or "ema": an exponential moving average (decay `ema_decay`) of the mean
                 R~ of the PREVIOUS batches. It does not depend on the current actions, so the
                 gradient estimate stays unbiased (the first step, with no past, uses b = 0).
    lr_schedule: "constant", or "linear" (lr decays linearly to 0 over `steps`; the iterates then
                 settle at the optimum instead of jittering around it).
    ref_probs:   (K,) pi_ref, required when beta > 0.

    Returns the exact (enumerated, using `bandit.means`) trajectory, one entry per step before the
    update plus the final one (steps + 1 entries): "expected_reward" E_pi[r], "kl"
    KL(pi || pi_ref) (0 without a reference), "objective" E_pi[r] - beta KL, and "probs" (a list
    of K floats).
    """
    from .losses import reinforce_loss  # late import: losses does not depend on bandit

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if policy.logits.numel() != bandit.n_arms:
        raise ValueError(f"policy has {policy.logits.numel()} arms, the bandit {bandit.n_arms}")
    if baseline not in ("none", "ema"):
        raise ValueError(f"baseline must be 'none' or 'ema', got {baseline!r}")
    if lr_schedule not in ("constant", "linear"):
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {lr_schedule!r}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if beta > 0 and ref_probs is None:
        raise ValueError("beta > 0 needs ref_probs (the reference policy pi_ref)")
    means = bandit.means.to(policy.logits.dtype)
    ref_logprobs = None
    if ref_probs is not None:
        check_probability_vector(ref_probs, "ref_probs")
        if ref_probs.shape != means.shape:
            raise ValueError(f"ref_probs must have shape {tuple(means.shape)}, got {tuple(ref_probs.shape)}")
        ref_logprobs = ref_probs.to(means.dtype).log()

    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    history: dict[str, list] = {"expected_reward": [], "kl": [], "objective": [], "probs": []}

    def log_exact():
        with torch.no_grad():
            probs = policy.probs()
            reward = float((probs * means).sum())
            kl = 0.0
            if ref_logprobs is not None:
                kl = float(torch.xlogy(probs, probs).sum() - (probs * ref_logprobs).sum())
        history["expected_reward"].append(reward)
        history["kl"].append(kl)
        history["objective"].append(reward - beta * kl)
        history["probs"].append(probs.tolist())

    b = None
    for step in range(steps):
        log_exact()
        if lr_schedule == "linear":
            opt.param_groups[0]["lr"] = lr * (1.0 - step / steps)
        arms = policy.sample(batch_size, generator=generator)  # (B,)
        rewards = bandit.pull(arms, generator=generator).to(means.dtype)  # (B,)
        logprobs = policy.log_prob(arms)  # (B,)
        shaped = rewards
        if beta > 0:
            shaped = rewards - beta * (logprobs.detach() - ref_logprobs[arms])  # Eq. (15)
        advantages = shaped - (b if (baseline == "ema" and b is not None) else 0.0)
        loss = reinforce_loss(logprobs, advantages)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if baseline == "ema":
            m = float(shaped.mean())
            b = m if b is None else ema_decay * b + (1 - ema_decay) * m
    log_exact()
    return history
