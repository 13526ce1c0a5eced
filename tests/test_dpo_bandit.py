"""DPO on an enumerable bandit recovers RLHF's optimum pi* = pi_ref exp(r / beta) / Z."""
import math

import pytest
import torch

from minirl.bandit import kl_regularized_optimum
from minirl.dpo_bandit import (
    dpo_population_loss,
    preference_matrix,
    sample_preference_pairs,
    train_dpo_on_bandit,
)
from minirl.losses import bradley_terry_loss, dpo_loss

D = torch.float64
REF = torch.tensor([0.1, 0.3, 0.25, 0.15, 0.2], dtype=D)
R = torch.tensor([1.0, -0.5, 0.0, 0.5, -1.0], dtype=D)


def random_problem(k, seed):
    g = torch.Generator().manual_seed(seed)
    ref = torch.softmax(torch.randn(k, generator=g, dtype=D), dim=0)
    rewards = torch.randn(k, generator=g, dtype=D)
    return ref, rewards


def test_population_loss_is_the_pair_weighted_dpo_loss():
    """Eq. (2) by brute force: every ordered pair (a, b), weight pi_ref(a) pi_ref(b), label a > b
    with probability sigma(r_a - r_b), loss from minirl.losses.dpo_loss on that single pair."""
    ref, rewards = random_problem(4, seed=0)
    beta = 0.3
    logits = torch.randn(4, generator=torch.Generator().manual_seed(1), dtype=D)
    logp = torch.log_softmax(logits, 0)
    total, weight = 0.0, 0.0
    for a in range(4):
        for b in range(4):
            if a == b:
                continue
            w = (ref[a] * ref[b]).item()
            p = torch.sigmoid(rewards[a] - rewards[b]).item()
            pair_loss, _ = dpo_loss(logp[[a]], logp[[b]], ref.log()[[a]], ref.log()[[b]], beta=beta)
            total += w * p * pair_loss.item()
            weight += w
    assert dpo_population_loss(logits, ref, rewards, beta).item() == pytest.approx(total / weight, rel=1e-12)


@pytest.mark.parametrize("k,seed,beta", [(5, None, 0.5), (5, None, 2.0), (6, 3, 0.25), (3, 4, 1.0)])
def test_population_dpo_recovers_pi_star(k, seed, beta):
    ref, rewards = (REF, R) if seed is None else random_problem(k, seed)
    pi_star = kl_regularized_optimum(ref, rewards, beta)
    out = train_dpo_on_bandit(ref, rewards, beta)
    # stated tolerance: L-BFGS stops at a gradient max-norm of 1e-9
    torch.testing.assert_close(out["probs"], pi_star, atol=1e-7, rtol=0)
    # pi* is a stationary point, and the minimum value is the Bradley-Terry entropy: at h = r_a - r_b
    # each pair's cross-entropy (1) equals the entropy of its label
    logits = pi_star.log().clone().requires_grad_(True)
    loss = dpo_population_loss(logits, ref, rewards, beta)
    loss.backward()
    assert logits.grad.abs().max().item() < 1e-12
    p = preference_matrix(rewards)
    w = ref[:, None] * ref[None, :] * (1 - torch.eye(k, dtype=D))
    entropy = (w * -(p * p.log())).sum() / w.sum()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-12)
    assert dpo_population_loss(ref.log(), ref, rewards, beta).item() > loss.item() + 1e-3
    # the implicit reward beta log(pi / pi_ref) equals r up to one constant (-beta log Z)
    r_hat = beta * (out["probs"].log() - ref.log())
    torch.testing.assert_close(r_hat - r_hat.mean(), rewards - rewards.mean(), atol=1e-6, rtol=0)


def test_sampled_dpo_is_bt_mle_plus_closed_form_and_near_pi_star():
    """Finite data: DPO returns pi_ref exp(r_mle / beta) / Z, with r_mle the Bradley-Terry MLE
    on the same pairs (exact up to the optimizers), and is off pi* only by r_mle's sampling error.
    Tolerance: with 20000 draws (about 15500 pairs after dropping a = b) at beta = 1, the total
    variation to pi* over 20 seeds averaged 0.012 and peaked at 0.023; we allow 0.05."""
    beta = 1.0
    pairs = sample_preference_pairs(REF, R, 20000, torch.Generator().manual_seed(0))
    out = train_dpo_on_bandit(REF, R, beta, pairs=pairs)

    r_fit = torch.zeros(5, dtype=D, requires_grad=True)  # a tabular reward model
    opt = torch.optim.LBFGS([r_fit], max_iter=200, tolerance_grad=1e-12, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss, _ = bradley_terry_loss(r_fit[pairs[0]], r_fit[pairs[1]])
        loss.backward()
        return loss

    opt.step(closure)
    assert r_fit.grad.abs().max().item() < 1e-7
    rlhf = kl_regularized_optimum(REF, r_fit.detach(), beta)
    torch.testing.assert_close(out["probs"], rlhf, atol=1e-6, rtol=0)

    pi_star = kl_regularized_optimum(REF, R, beta)
    tv = 0.5 * (out["probs"] - pi_star).abs().sum().item()
    assert tv < 0.05
    # ... and still far closer to pi* than the reference it started from
    assert tv < 0.25 * 0.5 * (REF - pi_star).abs().sum().item()


def test_sampled_error_shrinks_with_more_pairs():
    """Sampling error falls like 1/sqrt(n): ten times the pairs should cut it by about 3."""
    beta, pi_star = 1.0, kl_regularized_optimum(REF, R, 1.0)

    def mean_tv(n):
        tvs = []
        for seed in range(3):
            pairs = sample_preference_pairs(REF, R, n, torch.Generator().manual_seed(100 + seed))
            probs = train_dpo_on_bandit(REF, R, beta, pairs=pairs)["probs"]
            tvs.append(0.5 * (probs - pi_star).abs().sum().item())
        return sum(tvs) / len(tvs)

    small, large = mean_tv(1000), mean_tv(10000)
    assert large < small / 1.8


def test_sample_preference_pairs_follows_bradley_terry():
    g = torch.Generator().manual_seed(5)
    chosen, rejected = sample_preference_pairs(REF, R, 200000, g)
    assert chosen.shape == rejected.shape and bool((chosen != rejected).all())
    # empirical P(arm 1 beats arm 2) against sigma(r_1 - r_2), within 4 standard errors
    wins = ((chosen == 1) & (rejected == 2)).sum().item()
    losses = ((chosen == 2) & (rejected == 1)).sum().item()
    p = torch.sigmoid(R[1] - R[2]).item()
    n = wins + losses
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    # arms appear in proportion to pi_ref (conditioned on a != b both arms of a pair are still
    # drawn from pi_ref, so the marginal count is 2 n pi_ref(a)(1 - pi_ref(a)) / (1 - sum pi_ref^2))
    counts = torch.bincount(torch.cat([chosen, rejected]), minlength=5).to(D)
    expected = 2 * REF * (1 - REF) / (1 - (REF**2).sum())
    torch.testing.assert_close(counts / chosen.numel(), expected, atol=0.01, rtol=0)


def test_bad_input():
    with pytest.raises(ValueError, match="beta"):
        train_dpo_on_bandit(REF, R, 0.0)
    with pytest.raises(ValueError, match=r"\(5,\).*\(4,\)"):
        train_dpo_on_bandit(REF, R[:4], 1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        train_dpo_on_bandit(REF * 2, R, 1.0)
    with pytest.raises(ValueError, match="pairs"):
        train_dpo_on_bandit(REF, R, 1.0, pairs=(torch.tensor([0, 1]), torch.tensor([1])))
    with pytest.raises(ValueError, match="logits"):
        dpo_population_loss(torch.zeros(4, dtype=D), REF, R, 1.0)
    with pytest.raises(ValueError, match="n_pairs"):
        sample_preference_pairs(REF, R, 0)
