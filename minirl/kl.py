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


def _check_logits_pair(logits_q: torch.Tensor, logits_p: torch.Tensor) -> None:
    """Two floating (..., V) logit tensors of one shape with a non-empty vocabulary dimension."""
    check_tensor(logits_q, "logits_q", floating=True)
    check_tensor(logits_p, "logits_p", floating=True)
    if logits_q.shape != logits_p.shape:
        raise ValueError(
            f"logits_q and logits_p must have the same shape, got {tuple(logits_q.shape)} "
            f"and {tuple(logits_p.shape)}"
        )
    if logits_q.ndim == 0 or logits_q.shape[-1] == 0:
        raise ValueError("logits must have a non-empty last (vocabulary) dimension")


def categorical_kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """Exact KL(q || p) = sum_v q(v) (log q(v) - log p(v)) over the last dimension.

    logits_q, logits_p: (..., V) unnormalized log-probabilities (log-softmax is applied here).
    Returns (...). Zero-probability entries of q contribute 0; where q > 0 and p = 0 the KL is inf.
    """
    _check_logits_pair(logits_q, logits_p)
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


# ---------------------------------------------------------------------------------------------
# Reference quantities used by lesson 02 (and by tests): closed forms for the Gaussian example
# and exact, enumerated expected gradients of the estimators on categoricals.


def gaussian_estimator_moments(mu: float) -> dict[str, tuple[float, float]]:
    """Closed-form (mean, stdev) of k1, k2, k3 for q = N(0, 1), p = N(mu, 1), x ~ q.

    Here log r = log p(x) - log q(x) = mu x - mu^2 / 2 and the target is KL(q || p) = mu^2 / 2
    (returned under the key "kl" as (mu^2 / 2, 0.0)). Derived in notebooks/02_kl_estimators.ipynb:
        k1: mean mu^2/2,           stdev mu
        k2: mean mu^2/2 + mu^4/8,  stdev (mu^2/2) sqrt(mu^2 + 2)
        k3: mean mu^2/2,           stdev sqrt(exp(mu^2) - 1 - mu^2)
    These reproduce the table of J. Schulman, "Approximating KL divergence" (2020).
    """
    import math

    mu = float(mu)
    if not math.isfinite(mu) or mu == 0.0:
        raise ValueError(f"mu must be a finite non-zero mean shift, got {mu}")
    true = mu**2 / 2
    return {
        "kl": (true, 0.0),
        "k1": (true, abs(mu)),
        "k2": (true + mu**4 / 8, true * math.sqrt(mu**2 + 2)),
        "k3": (true, math.sqrt(math.expm1(mu**2) - mu**2)),
    }


def expected_estimator_gradient(estimator, logits_q: torch.Tensor, logits_p: torch.Tensor, mode: str = "loss") -> torch.Tensor:
    """Exact expected gradient (w.r.t. logits_q) of a KL estimator used one of two ways, by enumeration.

    q = softmax(logits_q) is the sampling policy (pi_theta), p = softmax(logits_p) is fixed (pi_ref),
    log_r(x) = log p(x) - log q(x), and x ~ q is enumerated over the last dimension V.
        mode="loss":   E_q[ grad k(log_r(x)) ]            the estimator in the loss, differentiated
                                                          through log q with the samples held fixed
                                                          (GRPO puts k3 in its loss this way)
        mode="reward": E_q[ stopgrad(k(log_r(x))) grad log q(x) ]   the estimator as a (negative)
                                                          reward, score-function / REINFORCE gradient
    Both are gradients of a surrogate to MINIMIZE; which divergence they are the gradient of depends
    on the estimator and the mode. Results lesson 02 derives and tests/test_kl.py checks:
    loss-k1 = 0; loss-k2 = reward-k1 = grad KL(q || p); loss-k3 = grad KL(p || q) (the other
    direction); reward-k3 = grad KL(q || p) - grad KL(p || q); loss + reward = grad E_q[k], which is
    grad KL(q || p) for k1 and k3 (k3 times a ratio q / stopgrad(q), TRL 1.16's default GRPO penalty).
    All of this is for one categorical; for sequences see lesson 02, Section 8.

    estimator: elementwise function of log_r (e.g. `k1`, `k2`, `k3`). logits_q, logits_p: (..., V),
    same shape, floating point; leading dimensions are independent distributions. Returns (..., V).
    """
    _check_logits_pair(logits_q, logits_p)
    if mode not in ("loss", "reward"):
        raise ValueError(f"mode must be 'loss' or 'reward', got {mode!r}")
    if not callable(estimator):
        raise ValueError(f"estimator must be a function of log_r such as minirl.kl.k3, got {type(estimator).__name__}")
    with torch.enable_grad():
        theta = logits_q.detach().clone().requires_grad_(True)
        log_q = torch.log_softmax(theta, dim=-1)  # (..., V)
        log_p = torch.log_softmax(logits_p.detach(), dim=-1)  # (..., V)
        weights = log_q.detach().exp()  # q(x): the expectation's weights, held fixed
        k = estimator(log_p - log_q)  # (..., V) the estimator's value at every x
        if mode == "loss":
            surrogate = (weights * k).sum()
        else:
            surrogate = (weights * k.detach() * log_q).sum()
        (grad,) = torch.autograd.grad(surrogate, theta)
    return grad
