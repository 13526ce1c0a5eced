"""DPO on a K-armed bandit: the enumerable case where DPO's optimum can be checked exactly
against RLHF's closed-form optimum pi* = pi_ref exp(r / beta) / Z (lesson 01,
`minirl.bandit.kl_regularized_optimum`). Used by lesson 10.

Setup. One prompt, K arms (responses). A true reward r (K,), a reference pi_ref (K,) with full
support. Preference data: draw a, b ~ pi_ref independently, then label "a beats b" with the
Bradley-Terry probability P(a > b) = sigma(r_a - r_b).

Why DPO recovers pi*. Write the implicit reward r_hat(a) = beta log(pi(a) / pi_ref(a)) and
h(a, b) = r_hat(a) - r_hat(b). For one unordered pair {a, b} with p = sigma(r_a - r_b), DPO's
expected loss over the label is the cross-entropy

    -p log sigma(h) - (1 - p) log sigma(-h),                                              (1)

which, as a function of h, is minimized where sigma(h) = p, i.e. at h = r_a - r_b. The population
loss (2) is a positively weighted sum of such terms, one per pair, and the choice r_hat = r makes
every term minimal at once, so it is a global minimum. Every pair has weight
pi_ref(a) pi_ref(b) > 0 and the pairs connect all arms, so h = r_a - r_b for all pairs pins
r_hat down to r + c for one constant c:

    beta log(pi(a) / pi_ref(a)) = r(a) + c   =>   pi(a) = pi_ref(a) exp(r(a) / beta) / Z = pi*(a).

(The constant is -beta log Z: the partition function cancels in every difference, which is why
DPO never needs it.) h is linear in the logits theta of pi (the log-sum-exp cancels in the
difference), and (1) is convex in h, so the loss is convex in theta and plain optimization finds
this minimum.

With a finite sample of pairs the same argument gives the Bradley-Terry maximum-likelihood
reward r_mle instead of r: DPO then returns pi_ref exp(r_mle / beta) / Z, exactly what RLHF with
a tabular reward model fitted by `bradley_terry_loss` on the same pairs would return, and it is
off from pi* by the sampling error of r_mle. If some pair is only ever seen one way round, the
MLE (and DPO's logits) run off to infinity: use enough pairs, and rewards of moderate spread.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_probability_vector, check_tensor
from .losses.preference import dpo_loss

__all__ = [
    "preference_matrix",
    "dpo_population_loss",
    "sample_preference_pairs",
    "train_dpo_on_bandit",
]


def _check_problem(ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> None:
    check_probability_vector(ref_probs, "ref_probs")
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    if ref_probs.ndim != 1 or rewards.shape != ref_probs.shape:
        raise ValueError(
            f"ref_probs and rewards must both be (K,), got {tuple(ref_probs.shape)} and {tuple(rewards.shape)}"
        )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def preference_matrix(rewards: torch.Tensor) -> torch.Tensor:
    """(K, K) Bradley-Terry probabilities P[a, b] = sigma(r_a - r_b) that arm a beats arm b."""
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    return torch.sigmoid(rewards[:, None] - rewards[None, :])


def dpo_population_loss(
    logits: torch.Tensor, ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO's expected loss over all preference data, computed exactly by enumeration:

        L(theta) = sum_{a != b} pi_ref(a) pi_ref(b) * P(a > b) * -log sigma(h(a, b)) / W        (2)

    with pi = softmax(logits), h(a, b) = beta [log pi(a)/pi_ref(a) - log pi(b)/pi_ref(b)],
    P(a > b) = sigma(r_a - r_b), and W = sum_{a != b} pi_ref(a) pi_ref(b) (pairs with a = b carry
    no preference and are left out, as `sample_preference_pairs` drops them). Summing over ordered
    pairs covers both labels of each unordered pair, so (2) is the pair-weighted sum of Eq. (1).
    It is the limit of `dpo_loss` averaged over `sample_preference_pairs` as n_pairs grows.

    logits: (K,) policy logits; ref_probs: (K,) full-support reference; rewards: (K,) true rewards.
    """
    _check_problem(ref_probs, rewards, beta)
    if logits.shape != ref_probs.shape:
        raise ValueError(f"logits must have shape {tuple(ref_probs.shape)}, got {tuple(logits.shape)}")
    r_hat = beta * (torch.log_softmax(logits, dim=-1) - ref_probs.log())  # (K,) implicit rewards
    h = r_hat[:, None] - r_hat[None, :]  # (K, K) h[a, b]
    weights = ref_probs[:, None] * ref_probs[None, :] * (1 - torch.eye(len(ref_probs), dtype=ref_probs.dtype))
    per_pair = -preference_matrix(rewards) * F.logsigmoid(h)  # (K, K)
    return (weights * per_pair).sum() / weights.sum()


def sample_preference_pairs(
    ref_probs: torch.Tensor, rewards: torch.Tensor, n_pairs: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offline preference data: a, b ~ pi_ref i.i.d., labelled by Bradley-Terry on `rewards`.

    Returns (chosen, rejected): int64 arm indices, each (M,) with M <= n_pairs: draws with a = b
    carry no preference and are dropped.
    """
    check_probability_vector(ref_probs, "ref_probs")
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    a = torch.multinomial(ref_probs, n_pairs, replacement=True, generator=generator)
    b = torch.multinomial(ref_probs, n_pairs, replacement=True, generator=generator)
    keep = a != b
    a, b = a[keep], b[keep]
    a_wins = torch.rand(a.shape, generator=generator, dtype=rewards.dtype) < torch.sigmoid(rewards[a] - rewards[b])
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def train_dpo_on_bandit(
    ref_probs: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_rounds: int = 20,
    grad_tol: float = 1e-9,
) -> dict:
    """Minimize DPO's loss over a softmax policy's logits, starting from pi_ref, by L-BFGS in float64.

    pairs None: the population loss `dpo_population_loss` (exact; recovers pi* up to the
        optimizer's tolerance). pairs = (chosen, rejected) arm indices (M,): the sample loss
        `minirl.losses.dpo_loss` on those pairs, with log pi and log pi_ref of each arm as the
        sequence log-probs.
    Stops when the gradient's max-norm falls below grad_tol, when a round of up to 100 L-BFGS
    iterations no longer lowers the loss (float64 round-off), or after max_rounds rounds.

    Returns a dict: "probs" (K,) the trained policy, "logits" (K,), "loss" (float), "grad_norm"
    (float, max-norm at the end), "rounds" (int).
    """
    _check_problem(ref_probs, rewards, beta)
    ref_probs = ref_probs.to(torch.float64)
    rewards = rewards.to(torch.float64)
    log_ref = ref_probs.log()
    if pairs is not None:
        chosen, rejected = pairs
        check_tensor(chosen, "chosen", ndim=1)
        if rejected.shape != chosen.shape or chosen.numel() == 0:
            raise ValueError(
                f"pairs must be two non-empty (M,) index tensors of one shape, got {tuple(chosen.shape)} and "
                f"{tuple(rejected.shape)}"
            )

    logits = log_ref.clone().requires_grad_(True)  # start at the reference policy

    def loss_fn():
        if pairs is None:
            return dpo_population_loss(logits, ref_probs, rewards, beta)
        logp = torch.log_softmax(logits, dim=-1)
        return dpo_loss(logp[chosen], logp[rejected], log_ref[chosen], log_ref[rejected], beta=beta)[0]

    opt = torch.optim.LBFGS(
        [logits], lr=1.0, max_iter=100, tolerance_grad=grad_tol, tolerance_change=0.0,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    rounds, previous = 0, closure().item()
    for rounds in range(1, max_rounds + 1):
        opt.step(closure)
        loss = closure().item()
        if logits.grad.abs().max().item() < grad_tol or loss >= previous:
            break
        previous = loss
    loss = closure()
    return {
        "probs": torch.softmax(logits.detach(), dim=-1),
        "logits": logits.detach(),
        "loss": loss.item(),
        "grad_norm": logits.grad.abs().max().item(),
        "rounds": rounds,
    }
