"""Best-of-n and rejection-sampling fine-tuning.

Derived in notebooks/09_best_of_n.ipynb. Best-of-n (BoN) draws n responses from pi_ref and keeps
the one the reward model scores highest; it changes the distribution without training, by

    pi_bon(y) = pi(y) * [F(r(y))^n - F_<(r(y))^n] / [F(r(y)) - F_<(r(y))]          (ties split by pi)

with F(v) = P_pi(r(Y) <= v) and F_<(v) = P_pi(r(Y) < v). With no atoms (every response's own
probability F - F_< = pi(y) -> 0; distinct rewards are NOT enough, see the V = 20 categorical of
notebook 09) pi_bon / pi -> n F^(n-1), whose log has expectation log n - (n-1)/n under pi_bon: the
analytic KL(pi_bon || pi) of Stiennon et al. (2020), an upper bound in general (Beirami et al. 2024);
it is `minirl.reward_model.best_of_n_kl`, re-exported here.

    best_of_n(scores, n)                           index of each group's best (first on ties)
    best_of_n_distribution(probs, rewards, n)      pi_bon exactly, on a categorical
    best_of_n_log_ratio(rewards, pool_rewards, n)  log pi_bon(y) / pi(y) from an empirical CDF: a
                                                   plug-in (biased) Monte-Carlo KL for a language model
    log_ratio_null_expectation(n, pool_size)       that estimate's exact expectation without atoms
    rejection_sampling_round(...)                  sample n per prompt, keep the best, SFT on it;
                                                   with passed_fn, the best that passes every
                                                   constraint judge (CGPO's CRRAFT, notebooks/15)
"""
from __future__ import annotations

import math

import torch

from .checks import check_probability_vector, check_tensor
from .lm import response_logprobs
from .reward_model import best_of_n_kl  # noqa: F401  (re-exported: the analytic KL)


def _check_n(n):
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")


def best_of_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    """scores: (B * n,) with the n samples of each prompt contiguous, or (B, n).
    Returns (B,) long: the FLAT index (into the B * n samples) of each group's highest score; the
    first of tied maxima wins (the first drawn, as a sampler that stops at a strict improvement)."""
    check_tensor(scores, "scores", floating=True)
    _check_n(n)
    flat = scores.reshape(-1)
    if scores.ndim not in (1, 2) or flat.numel() == 0 or flat.numel() % n or (scores.ndim == 2 and scores.shape[1] != n):
        raise ValueError(f"scores must be (B * n,) or (B, n) with n = {n}, got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("scores must be finite (a NaN would never be selected, or always)")
    groups = flat.view(-1, n)  # (B, n)
    is_max = groups == groups.max(dim=1, keepdim=True).values
    first = is_max.float().argmax(dim=1)  # argmax of a 0/1 row returns its first 1
    return torch.arange(groups.shape[0]) * n + first


def best_of_n_distribution(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The exact distribution of the best of n i.i.d. draws from a categorical `probs` (..., V)
    ranked by `rewards` (..., V). Outcomes with equal rewards share their level's mass in
    proportion to probs (whichever of them is drawn first wins, and it is distributed as probs).
    Returns (..., V), float64, rows summing to 1."""
    check_probability_vector(probs, "probs")
    check_tensor(rewards, "rewards", floating=True)
    _check_n(n)
    if rewards.shape != probs.shape:
        raise ValueError(f"rewards must have the shape of probs {tuple(probs.shape)}, got {tuple(rewards.shape)}")
    p, r = probs.double(), rewards.double()
    le = (r.unsqueeze(-2) <= r.unsqueeze(-1)).double()  # (..., V, V): [r_j <= r_i]
    lt = (r.unsqueeze(-2) < r.unsqueeze(-1)).double()
    F = (le * p.unsqueeze(-2)).sum(-1)  # (..., V) P(R <= r_i)
    F_lt = (lt * p.unsqueeze(-2)).sum(-1)  # P(R < r_i)
    level = F - F_lt  # mass of r_i's level
    ratio = torch.where(level > 0, (F**n - F_lt**n) / level.clamp_min(1e-300), torch.zeros_like(F))
    return p * ratio


def best_of_n_log_ratio(rewards: torch.Tensor, pool_rewards: torch.Tensor, n: int) -> torch.Tensor:
    """log pi_bon(y) / pi(y) for selected samples y with rewards (N,), estimated with the empirical
    CDF of `pool_rewards` (M,), fresh i.i.d. rewards of samples from pi:

        F = (#{pool <= r} + 1) / (M + 1),  F_< = #{pool < r} / (M + 1),
        log ratio = log[(F^n - F_<^n) / (F - F_<)]     (the sample itself counts as one pool point)

    The ratio depends on y only through the CDF at its reward and its level mass F - F_< = pi(y).
    A pool estimates the CDF but not the level mass: counting the sample itself sets it to
    1/(M + 1), an atom far larger than a real response's probability. So the mean over BoN samples
    is a biased plug-in estimate of KL(pi_bon || pi): low by a finite-pool bias even for a reward
    with no atoms, where log n - (n-1)/n is exact (its expectation there is
    `log_ratio_null_expectation(n, M)`), and it tends to the exact KL only as M grows. Compare a
    measurement with that null expectation, not with log n - (n-1)/n. (No ties is not the same as
    no atoms: distinct rewards can still leave the exact KL well below log n - (n-1)/n.)"""
    check_tensor(rewards, "rewards", ndim=1, floating=True)
    check_tensor(pool_rewards, "pool_rewards", ndim=1, floating=True)
    _check_n(n)
    if pool_rewards.numel() == 0:
        raise ValueError("pool_rewards must hold at least one reward")
    r, pool = rewards.double(), pool_rewards.double()
    M = pool.numel()
    F = ((pool[None, :] <= r[:, None]).sum(-1) + 1).double() / (M + 1)  # (N,)
    F_lt = (pool[None, :] < r[:, None]).sum(-1).double() / (M + 1)
    return torch.log(F**n - F_lt**n) - torch.log(F - F_lt)


def log_ratio_null_expectation(n: int, pool_size: int) -> float:
    """The expectation of `best_of_n_log_ratio(...).mean()` over best-of-n samples when the reward
    has no atoms (a continuous reward, where KL = log n - (n-1)/n exactly), for a pool of M =
    pool_size fresh rewards: the winner's quantile U ~ Beta(n, 1), the pool count below it
    k | U ~ Binomial(M, U), so k ~ BetaBinomial(M, n, 1), and

        E = E_k[log((k+1)^n - k^n)] - (n-1) log(M+1).

    The gap to log n - (n-1)/n is the estimator's own bias (notebook 09, Eq. (5))."""
    _check_n(n)
    if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
        raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
    M = pool_size
    k = torch.arange(M + 1, dtype=torch.float64)
    # P(k) = C(M, k) B(k+n, M-k+1) / B(n, 1); the (M-k)! of C(M, k) and of the Beta cancel
    log_pk = math.lgamma(M + 1) - torch.lgamma(k + 1) + torch.lgamma(k + n) - math.lgamma(M + n + 1) + math.log(n)
    return float((log_pk.exp() * (torch.log((k + 1) ** n - k ** n) - (n - 1) * math.log(M + 1))).sum())


def rejection_sampling_round(policy, tokenizer, prompts, score_fn, n: int, optimizer, max_new_tokens: int = 16,
                             epochs: int = 1, minibatch_size: int = 16, generator=None,
                             passed_fn=None) -> dict:
    """One round of rejection-sampling fine-tuning (best-of-n distillation, as in Llama 2's and
    the R1 recipe's RS stages): for each prompt draw n responses from the CURRENT policy, keep the
    one `score_fn` (samples -> (B*n,)) ranks best, then `epochs` passes of SFT on the kept
    (prompt, response) pairs with the response-masked NLL (minirl.losses.sft.sft_loss, token mean),
    as steps of `minirl.algos.sft` with `optimizer` (which persists across rounds), no clipping.
    Returns {"score_all", "score_best", "sft_loss_first", "sft_loss", "kept"}: the mean score of
    all samples, of the kept ones, the loss of the first and of the last minibatch, and the number
    of kept pairs.

    passed_fn(samples) -> bool (B*n,), optional: CRRAFT's filter (CGPO, Xu et al. 2024): keep, of
    each prompt's n samples, the best-scored one among those that pass (`judges.constrained_best`)
    and skip a prompt none of whose samples passes; if no prompt is kept, no step is taken (the
    losses are NaN, "score_best" too). Without it (the default) every prompt keeps its best."""
    from .algos.sft import SFTConfig, init_sft, train_sft
    from .rlhf import sample

    _check_n(n)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of str")
    s = sample(policy, tokenizer, [p for p in prompts for _ in range(n)], max_new_tokens, 1.0, generator)
    scores = score_fn(s).float()
    if passed_fn is None:
        keep = best_of_n(scores, n)  # (B,)
    else:
        from .judges import constrained_best

        keep = constrained_best(scores, passed_fn(s), n)  # (B,), -1 where no sample passes
        keep = keep[keep >= 0]
        if keep.numel() == 0:
            nan = float("nan")
            return {"score_all": float(scores.detach().mean()), "score_best": nan, "sft_loss_first": nan,
                    "sft_loss": nan, "kept": 0}
    rmask = s.response_mask[keep]
    seq, attn = s.sequences[keep], s.attention_mask[keep]
    loss_mask = torch.cat([rmask.new_zeros(rmask.shape[0], s.prompt_length), rmask], dim=1)  # responses only
    B = keep.numel()
    batches = []  # `epochs` shuffled passes over the kept pairs
    for _ in range(epochs):
        order = torch.randperm(B, generator=generator)
        batches += [(seq[i], attn[i], loss_mask[i]) for i in order.split(minibatch_size)]
    cfg = SFTConfig(max_grad_norm=None)  # the caller's optimizer and learning rate, no clipping
    rows = train_sft(init_sft(policy, cfg, len(batches), optimizer=optimizer), batches, cfg)
    losses = [row["loss"] for row in rows]
    scores = scores.detach()
    return {"score_all": float(scores.mean()), "score_best": float(scores[keep].mean()), "sft_loss_first": losses[0],
            "sft_loss": losses[-1], "kept": B}
