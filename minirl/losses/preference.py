"""Preference losses: Bradley-Terry reward models (lesson 05), DPO (lesson 10) and its family
IPO, KTO, ORPO, SimPO, CPO, RRHF (lesson 11).

Every function is pure, works on per-sequence log-probabilities (or rewards) that the caller has
already reduced over tokens, and returns `(loss, stats)`: a scalar to MINIMIZE and a dict of
detached statistics (per-example implicit rewards, accuracies, margins). Write
`loss, stats = dpo_loss(...)`.

Which reduction over tokens each loss expects is part of its definition:
  summed log-probs   log pi(y|x) = sum_t log pi(y_t | x, y_<t)           DPO, KTO, CPO
  averaged log-probs (1/|y|) sum_t log pi(y_t | x, y_<t)                 SimPO, ORPO, RRHF ranking,
                                                                         IPO as TRL runs it
Each docstring says which one it expects. `minirl.lm.sequence_logprobs` gives the per-token terms;
reduce them with `minirl.masks.masked_sum` or `masked_mean` over the response mask.

TRL (1.16.0) computes the same quantities; tests/test_trl_parity.py feeds identical tensors to
both and asserts agreement to 1e-6. Differences in convention are listed per function.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..checks import check_batch_1d, check_positive, check_tensor

__all__ = [
    "bradley_terry_loss",
    "ranking_to_pairs",
    "dpo_loss",
    "ipo_loss",
    "kto_loss",
    "orpo_loss",
    "simpo_loss",
    "cpo_loss",
    "rrhf_loss",
    "log1mexp",
]

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


# ----------------------------------------------------------------------------------------------
# input checks


# The shared validators live in minirl.checks (one copy for every loss); the short private names
# are kept for the code below.
_check_batch = check_batch_1d
_check_positive = check_positive


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")


def _smoothed_logistic(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """(1 - eps) * -log sigma(z) + eps * -log sigma(-z): the logistic loss when a fraction eps of
    the labels is believed flipped ("conservative DPO", Mitchell 2023). eps = 0 is plain -log sigma(z).
    logsigmoid is used instead of log(sigmoid(.)), which underflows to -inf for z below about -100."""
    loss = -F.logsigmoid(logits)
    if label_smoothing > 0:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


# ----------------------------------------------------------------------------------------------
# reward models (lesson 05)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor):
    """Reward-model loss -mean log sigma(r_w - r_l) (Bradley & Terry 1952; InstructGPT, Ouyang et
    al. 2022, Eq. 1, without its 1/C(K,2) factor: pass all pairs of a prompt and the mean does it).

    Under Bradley-Terry, P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)); the loss is the negative
    log-likelihood of the observed preferences.

    chosen_rewards, rejected_rewards: (B,) scalar rewards r(x, y_w), r(x, y_l) of each pair.
    Returns (loss, stats): loss a scalar; stats["accuracy"] the fraction with r_w > r_l,
    stats["margin"] the mean of r_w - r_l.
    """
    _check_batch(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    margin = chosen_rewards - rejected_rewards  # (B,)
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {"accuracy": (margin > 0).float().mean(), "margin": margin.mean()}
    return loss, stats


def ranking_to_pairs(ranking) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a K-way ranking into its C(K, 2) = K(K-1)/2 (chosen, rejected) pairs.

    ranking: item indices ordered best first, (K,) or a batch (N, K) of rankings of K items each;
             a list is accepted.
    Returns (chosen, rejected): int64 tensors of shape (C(K,2),) or (N, C(K,2)). Pair p compares
    positions i < j of the ranking, in the order (0,1), (0,2), ..., (K-2, K-1), so
    chosen[..., p] = ranking[..., i] beats rejected[..., p] = ranking[..., j].
    """
    ranking = torch.as_tensor(ranking)
    if ranking.dtype.is_floating_point or ranking.dtype == torch.bool:
        raise ValueError(f"ranking must hold integer item indices, got dtype {ranking.dtype}")
    if ranking.ndim not in (1, 2) or ranking.shape[-1] < 2:
        raise ValueError(f"ranking must have shape (K,) or (N, K) with K >= 2, got {tuple(ranking.shape)}")
    k = ranking.shape[-1]
    sorted_rows = ranking.sort(dim=-1).values
    if bool((sorted_rows[..., 1:] == sorted_rows[..., :-1]).any()):
        raise ValueError("ranking must list each item once (found a repeated index)")
    i, j = torch.triu_indices(k, k, offset=1)  # (2, C(K,2)) positions with i < j
    return ranking[..., i], ranking[..., j]


# ----------------------------------------------------------------------------------------------
# DPO and IPO (lessons 10, 11)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
):
    """DPO (Rafailov et al. 2023, Eq. 7) and two relatives that share its inputs.

    All four inputs are (B,) sequence log-probs log pi(y|x) of the response tokens (summed over
    the response; the prompt is not counted) for the chosen y_w and the rejected y_l.
    Implicit rewards r_hat = beta * (log pi - log pi_ref); h = r_hat_w - r_hat_l (all (B,)).

    loss_type
      "sigmoid" -log sigma(h): DPO. With label_smoothing eps > 0 it is conservative DPO,
                (1-eps) * -log sigma(h) + eps * -log sigma(-h).
      "hinge"   relu(1 - h): the SLiC hinge (Zhao et al. 2023) on DPO's margin.
      "ipo"     (h / beta - 1 / (2 beta))^2: IPO (Azar et al. 2023, Eq. 17) with tau = beta;
                note h / beta is the log-ratio difference, beta does not scale it. This function
                uses the log-probs exactly as given. TRL's "ipo" first divides each sequence's
                log-ratio by its number of completion tokens, so for TRL's convention pass
                per-token AVERAGED log-probs (sum / |y|) for all four inputs: (sum - sum_ref) / |y|
                = avg - avg_ref, so the two agree exactly. The IPO paper uses sums.
    The mean over the batch is returned. label_smoothing must be 0 for "hinge" and "ipo".

    Returns (loss, stats): stats holds (B,) "chosen_rewards" and "rejected_rewards" (r_hat_w,
    r_hat_l), and scalars "reward_accuracy" (fraction with r_hat_w > r_hat_l) and
    "reward_margin" (mean h), all detached, named as in TRL's logs.

    Gradient (sigmoid, eps = 0): d loss / d log pi(y_w) = -beta sigma(r_hat_l - r_hat_w) / B:
    pairs the implicit reward already orders correctly get little weight.
    TRL 1.16's "sigmoid" has no label smoothing; at eps = 0 the two agree.
    """
    _check_batch(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    _check_positive(beta, "beta")
    _check_smoothing(label_smoothing)
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if loss_type != "sigmoid" and label_smoothing != 0:
        raise ValueError(f"label_smoothing applies to loss_type 'sigmoid' only, got {label_smoothing} with {loss_type!r}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,) log pi/pi_ref on y_w
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,) on y_l
    delta = chosen_logratios - rejected_logratios  # (B,) = h / beta

    if loss_type == "sigmoid":
        losses = _smoothed_logistic(beta * delta, label_smoothing)  # Eq. 7 of the DPO paper
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # "ipo": regress the log-ratio difference onto 1 / (2 tau)
        losses = (delta - 1 / (2 * beta)) ** 2

    with torch.no_grad():
        chosen_rewards = beta * chosen_logratios
        rejected_rewards = beta * rejected_logratios
        stats = {
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        }
    return losses.mean(), stats


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    tau: float = 0.1,
):
    """IPO (Azar et al. 2023, Eq. 17): mean of (h - 1 / (2 tau))^2 with
    h = log[pi(y_w) pi_ref(y_l) / (pi(y_l) pi_ref(y_w))].

    Minimized at h = 1 / (2 tau) (5 nats at tau = 0.1) instead of pushing h to infinity as DPO
    does on deterministic preferences. Same as `dpo_loss(..., beta=tau, loss_type="ipo")`; read
    its docstring for the summed vs averaged log-prob convention (TRL averages per token).
    """
    return dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        beta=tau, loss_type="ipo",
    )


# ----------------------------------------------------------------------------------------------
# KTO (lesson 11)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    policy_kl_logps: torch.Tensor | None = None,
    ref_kl_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
):
    """KTO (Ethayarajh et al. 2024, Eqs. 7-8 as implemented in TRL): unpaired examples, each
    labelled desirable (True) or undesirable (False).

    With r = log pi(y|x) - log pi_ref(y|x) and the reference point
        z_ref = max(0, mean_j [log pi(y'_j|x_j) - log pi_ref(y'_j|x_j)])   (detached),
    an estimate of KL(pi || pi_ref) from mismatched pairs (x_j, y'_j), y'_j the completion of
    another example in the batch, the per-example loss is
        desirable:   lambda_D * (1 - sigma(beta (r - z_ref)))
        undesirable: lambda_U * (1 - sigma(beta (z_ref - r)))
    and the loss is its mean over the whole batch (TRL's `losses.nanmean()`).

    policy_logps, ref_logps: (B,) summed response log-probs. labels: (B,) bool or 0/1.
    policy_kl_logps, ref_kl_logps: (M,) summed log-probs of the mismatched completions under
        pi and pi_ref (M is usually B); both None means z_ref = 0 (no KL estimate).
    desirable_weight, undesirable_weight: lambda_D, lambda_U (the paper suggests
        lambda_D n_D / (lambda_U n_U) in [1, 4/3]).

    A batch with only one kind of label is handled, as in TRL: the loss is the mean over the
    examples present (z_ref still comes from the KL batch). An empty batch raises.

    Returns (loss, stats): "kl" (z_ref), (B,) "rewards" = beta * r, and the means
    "chosen_rewards" / "rejected_rewards" over each label kind (NaN when that kind is absent).
    """
    _check_batch(policy_logps=policy_logps, ref_logps=ref_logps)
    check_tensor(labels, "labels", ndim=1)
    if labels.shape != policy_logps.shape:
        raise ValueError(f"labels must have shape {tuple(policy_logps.shape)}, got {tuple(labels.shape)}")
    if labels.dtype != torch.bool:
        if bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError("labels must be bool or hold only 0/1 (1 = desirable)")
        labels = labels.bool()
    _check_positive(beta, "beta")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError(
            f"desirable_weight and undesirable_weight must be >= 0, got {desirable_weight}, {undesirable_weight}"
        )

    if (policy_kl_logps is None) != (ref_kl_logps is None):
        raise ValueError("pass both policy_kl_logps and ref_kl_logps, or neither (z_ref = 0)")
    if policy_kl_logps is None:
        kl = torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)
    else:
        _check_batch(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
        kl = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)  # z_ref, no gradient

    logratios = policy_logps - ref_logps  # (B,)
    desirable = (1 - torch.sigmoid(beta * (logratios - kl))) * desirable_weight
    undesirable = (1 - torch.sigmoid(beta * (kl - logratios))) * undesirable_weight
    losses = torch.where(labels, desirable, undesirable)  # (B,)

    with torch.no_grad():
        rewards = beta * logratios
        nan = torch.full((), float("nan"), dtype=rewards.dtype, device=rewards.device)
        stats = {
            "kl": kl,
            "rewards": rewards,
            "chosen_rewards": rewards[labels].mean() if bool(labels.any()) else nan,
            "rejected_rewards": rewards[~labels].mean() if bool((~labels).any()) else nan,
        }
    return losses.mean(), stats


# ----------------------------------------------------------------------------------------------
# reference-free losses: ORPO, SimPO, CPO (lesson 11)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Maechler 2012): log(-expm1(x)) near 0,
    log1p(-exp(x)) below -log 2. Returns -inf at x = 0 and NaN above.

    Each branch gets a safe input where it is not selected ("double where"), so the discarded
    branch cannot turn the gradient into NaN: TRL's `log1mexp` (same branches) returns a NaN
    gradient for float32 x in about (-6e-8, 0), where exp(x) rounds to 1 in the unused branch.
    """
    small = x < -math.log(2)
    safe_small = torch.where(small, x, torch.full_like(x, -1.0))
    safe_large = torch.where(small, torch.full_like(x, -0.5), x)
    return torch.where(small, torch.log1p(-torch.exp(safe_small)), torch.log(-torch.expm1(safe_large)))


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor | None = None,
    lam: float = 0.1,
):
    """ORPO (Hong et al. 2024, Eqs. 6-7): L = L_SFT + lambda * L_OR, no reference model.

    The inputs are (B,) per-token AVERAGED log-probs, log P(y|x) = (1/|y|) sum_t log pi(y_t|...),
    as in the paper and TRL; they must be < 0 (a probability of 1 has infinite odds: this raises
    ValueError instead of returning NaN). With odds(y) = P / (1 - P),
        log odds(y) = log P - log(1 - P),    log(1 - P) = log1mexp(log P)  (no cancellation),
        L_OR = -mean log sigma(log odds(y_w) - log odds(y_l)).
    chosen_nll: scalar SFT loss on the chosen responses. None uses -mean(policy_chosen_logps),
        the per-sequence average NLL; TRL instead uses a token-level cross-entropy over the chosen
        prompt AND response tokens of the batch, so pass that value to match TRL.
    lam: lambda (TRL's `beta`, default 0.1). TRL's `odds_ratio_loss` returns +lambda * log sigma(.)
        per example and the trainer's loss is nll - mean(that), which equals this L. TRL casts the
        log-probs to float32 first; this function keeps the input dtype.

    Returns (loss, stats): "nll", "or_loss" (L_OR without lambda), "log_odds_ratio" (mean of
    log sigma(log odds ratio), TRL's log), "log_odds_chosen" (mean log odds ratio), (B,)
    "chosen_rewards" / "rejected_rewards" = lambda * log P, and "reward_accuracy".
    """
    _check_batch(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    _check_positive(lam, "lam")
    for name, t in (("policy_chosen_logps", policy_chosen_logps), ("policy_rejected_logps", policy_rejected_logps)):
        if bool((t >= 0).any()):
            raise ValueError(
                f"{name} must be < 0 (average log-probs of a probability below 1), got max {t.max().item():.4g}"
            )
    if chosen_nll is None:
        chosen_nll = -policy_chosen_logps.mean()
    else:
        check_tensor(chosen_nll, "chosen_nll", ndim=0, floating=True)

    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        log1mexp(policy_chosen_logps) - log1mexp(policy_rejected_logps)
    )  # (B,) log [odds(y_w) / odds(y_l)]
    log_sig = F.logsigmoid(log_odds)  # (B,)
    or_loss = -log_sig.mean()
    loss = chosen_nll + lam * or_loss  # Eq. 6

    with torch.no_grad():
        chosen_rewards = lam * policy_chosen_logps
        rejected_rewards = lam * policy_rejected_logps
        stats = {
            "nll": chosen_nll.detach(),
            "or_loss": or_loss.detach(),
            "log_odds_ratio": log_sig.mean(),
            "log_odds_chosen": log_odds.mean(),
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        }
    return loss, stats


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
):
    """SimPO (Meng et al. 2024, Eq. 6): -mean log sigma(beta * (avg_w - avg_l) - gamma).

    Inputs are (B,) per-token AVERAGED log-probs (1/|y|) log pi(y|x): the length normalization is
    the point of SimPO (the reward beta/|y| log pi(y|x) does not grow with length). No reference.
    gamma is the target reward margin in reward units (the paper tunes gamma/beta around 0.5; the
    defaults beta = 2, gamma = 1 follow that). TRL's CPOTrainer with loss_type="simpo" computes
    the same with `simpo_gamma` = gamma. label_smoothing as in `dpo_loss`.

    Returns (loss, stats): (B,) "chosen_rewards" = beta * avg_w, "rejected_rewards", and
    "reward_accuracy", "reward_margin".
    """
    _check_batch(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    _check_positive(beta, "beta")
    _check_smoothing(label_smoothing)
    chosen_rewards = beta * policy_chosen_logps  # (B,)
    rejected_rewards = beta * policy_rejected_logps  # (B,)
    losses = _smoothed_logistic(chosen_rewards - rejected_rewards - gamma, label_smoothing)
    with torch.no_grad():
        stats = {
            "chosen_rewards": chosen_rewards.detach(),
            "rejected_rewards": rejected_rewards.detach(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        }
    return losses.mean(), stats


def cpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
):
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization", Eqs. 3 and 6):
    L = -mean log sigma(beta (log pi(y_w) - log pi(y_l))) + alpha * NLL(y_w).

    DPO with the reference dropped (pi_ref uniform) plus a behaviour-cloning term on the chosen
    responses. Inputs: (B,) summed response log-probs (TRL's CPO default; its "simpo"/"ipo" loss
    types average instead). chosen_nll: scalar; None uses -mean(policy_chosen_logps) (per
    sequence). TRL's CPOTrainer uses a token-level cross-entropy over the chosen responses: pass
    it here to match. alpha: TRL's `cpo_alpha` (default 1.0). label_smoothing as in `dpo_loss`.

    Returns (loss, stats): "nll", "preference_loss", (B,) "chosen_rewards" = beta * log pi(y_w),
    "rejected_rewards", "reward_accuracy", "reward_margin".
    """
    _check_batch(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    _check_positive(beta, "beta")
    _check_smoothing(label_smoothing)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if chosen_nll is None:
        chosen_nll = -policy_chosen_logps.mean()
    else:
        check_tensor(chosen_nll, "chosen_nll", ndim=0, floating=True)
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    preference = _smoothed_logistic(chosen_rewards - rejected_rewards, label_smoothing).mean()
    loss = preference + alpha * chosen_nll
    with torch.no_grad():
        stats = {
            "nll": chosen_nll.detach(),
            "preference_loss": preference.detach(),
            "chosen_rewards": chosen_rewards.detach(),
            "rejected_rewards": rejected_rewards.detach(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        }
    return loss, stats


# ----------------------------------------------------------------------------------------------
# RRHF (lesson 11)


def rrhf_loss(
    logps: torch.Tensor,
    rewards: torch.Tensor,
    sft_logps: torch.Tensor | None = None,
    sft_weight: float = 1.0,
):
    """RRHF (Yuan et al. 2023, Eqs. 2-4): a ranking hinge over K candidates per prompt plus SFT on
    the best one. No reference model, no sampling during training.

    logps:     (B, K) per-token AVERAGED log-probs p_i = (1/|y_i|) log pi(y_i|x) of K candidates.
    rewards:   (B, K) their rewards r_i (only the order matters).
    sft_logps: (B, K) SUMMED log-probs for the SFT term (the paper's Eq. 3 sums over tokens);
               None reuses `logps`.
    L_rank = sum over pairs with r_i < r_j of max(0, p_i - p_j)          (Eq. 2; ties skipped)
    L_ft   = -sft_logps[argmax_i r_i]  (first of the maxima on ties)    (Eq. 3)
    loss   = mean over the batch of L_rank + sft_weight * L_ft          (Eq. 4)
    The rank term is a sum over pairs, not a mean, as in the paper.

    Returns (loss, stats): "rank_loss", "sft_loss" (batch means), "pair_accuracy" (fraction of
    strictly ordered pairs with p_j > p_i).
    """
    check_tensor(logps, "logps", ndim=2, floating=True)
    check_tensor(rewards, "rewards", ndim=2, floating=True)
    if rewards.shape != logps.shape:
        raise ValueError(f"rewards must have the shape of logps {tuple(logps.shape)}, got {tuple(rewards.shape)}")
    if logps.shape[0] == 0 or logps.shape[1] < 2:
        raise ValueError(f"logps must be (B, K) with B >= 1 and K >= 2 candidates, got {tuple(logps.shape)}")
    if sft_logps is None:
        sft_logps = logps
    else:
        check_tensor(sft_logps, "sft_logps", ndim=2, floating=True)
        if sft_logps.shape != logps.shape:
            raise ValueError(f"sft_logps must have shape {tuple(logps.shape)}, got {tuple(sft_logps.shape)}")
    if sft_weight < 0:
        raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")

    worse = rewards[:, :, None] < rewards[:, None, :]  # (B, K, K): [b, i, j] = r_i < r_j
    gaps = logps[:, :, None] - logps[:, None, :]  # (B, K, K): p_i - p_j
    rank = (torch.relu(gaps) * worse).sum(dim=(1, 2))  # (B,)
    best = rewards.argmax(dim=1)  # (B,)
    sft = -sft_logps.gather(1, best[:, None]).squeeze(1)  # (B,)
    loss = (rank + sft_weight * sft).mean()
    with torch.no_grad():
        n_pairs = worse.sum()
        correct = ((gaps < 0) & worse).sum()
        stats = {
            "rank_loss": rank.mean(),
            "sft_loss": sft.mean(),
            "pair_accuracy": correct / n_pairs if n_pairs > 0 else torch.tensor(float("nan")),
        }
    return loss, stats
