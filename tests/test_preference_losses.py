"""minirl.losses.preference: identities, hand-computed values, autograd gradients, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from minirl.losses import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    ranking_to_pairs,
    rrhf_loss,
    simpo_loss,
)
from minirl.losses.preference import log1mexp

D = torch.float64


def sig(x):
    return 1 / (1 + math.exp(-x))


def random_logps(b=6, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(b, generator=g, dtype=dtype) * 20 + 1) for _ in range(4)]


# ---------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_values_and_stats():
    loss, stats = bradley_terry_loss(torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.0, 2.0], dtype=D))
    expected = (-math.log(sig(1.0)) - math.log(sig(-2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["accuracy"].item() == 0.5
    assert stats["margin"].item() == pytest.approx(-0.5)
    # equal rewards: P = 1/2, loss log 2
    loss, _ = bradley_terry_loss(torch.zeros(3, dtype=D), torch.zeros(3, dtype=D))
    assert loss.item() == pytest.approx(math.log(2))


def test_bradley_terry_stable_for_large_margins():
    big = torch.tensor([1000.0, -1000.0], dtype=torch.float32)
    loss, _ = bradley_terry_loss(big, torch.zeros(2))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(500.0)  # (0 + 1000) / 2
    r_w = torch.tensor([-500.0], requires_grad=True)
    loss, _ = bradley_terry_loss(r_w, torch.zeros(1))
    loss.backward()
    assert r_w.grad.item() == pytest.approx(-1.0)  # -sigma(r_l - r_w) = -1, no NaN


def test_bradley_terry_bad_input():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="dimension"):
        bradley_terry_loss(torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="empty"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


def test_ranking_to_pairs():
    chosen, rejected = ranking_to_pairs([2, 0, 3, 1])
    assert chosen.tolist() == [2, 2, 2, 0, 0, 3]
    assert rejected.tolist() == [0, 3, 1, 3, 1, 1]
    for k in range(2, 7):
        c, r = ranking_to_pairs(torch.randperm(k))
        assert c.numel() == math.comb(k, 2)
        assert len(set(zip(c.tolist(), r.tolist()))) == math.comb(k, 2)
    # batched: rows are independent rankings
    c, r = ranking_to_pairs(torch.tensor([[0, 1, 2], [2, 1, 0]]))
    assert c.tolist() == [[0, 0, 1], [2, 2, 1]] and r.tolist() == [[1, 2, 2], [1, 0, 0]]
    # the pairs' BT loss is the mean over all C(K,2) comparisons (InstructGPT's 1/C(K,2))
    scores = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=D)
    c, r = ranking_to_pairs([2, 3, 0, 1])
    _, stats = bradley_terry_loss(scores[c], scores[r])
    assert stats["accuracy"].item() == 1.0  # scores agree with the ranking
    for bad in ([0.0, 1.0], [1], [0, 0, 1], [[[0, 1]]]):
        with pytest.raises(ValueError):
            ranking_to_pairs(bad)


# ---------------------------------------------------------------------------- DPO


def test_dpo_hand_value_and_stats():
    pc, pr, rc, rr = (torch.tensor([v], dtype=D) for v in (-10.0, -12.0, -11.0, -11.5))
    beta = 0.5
    # h = beta ((-10 + 11) - (-12 + 11.5)) = 0.5 * 1.5 = 0.75
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert loss.item() == pytest.approx(-math.log(sig(0.75)), rel=1e-12)
    assert stats["chosen_rewards"].item() == pytest.approx(0.5)
    assert stats["rejected_rewards"].item() == pytest.approx(-0.25)
    assert stats["reward_margin"].item() == pytest.approx(0.75)
    assert stats["reward_accuracy"].item() == 1.0
    loss_h, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")
    assert loss_h.item() == pytest.approx(0.25)
    loss_i, _ = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    assert loss_i.item() == pytest.approx((1.5 - 1.0) ** 2)  # 1/(2 tau) = 1
    # conservative DPO with eps = 0.1
    loss_c, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.1)
    assert loss_c.item() == pytest.approx(-0.9 * math.log(sig(0.75)) - 0.1 * math.log(sig(-0.75)), rel=1e-12)


def test_dpo_at_reference_is_log2():
    pc, pr, _, _ = random_logps()
    loss, stats = dpo_loss(pc, pr, pc.clone(), pr.clone())
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["reward_accuracy"].item() == 0.0  # ties are not counted as correct


def test_dpo_swap_symmetry():
    """Swapping chosen and rejected maps P(y_w > y_l) = sigma(h) to 1 - sigma(h) = sigma(-h):
    per example loss(h) - loss(-h) = -h (since log sigma(h) - log sigma(-h) = h)."""
    pc, pr, rc, rr = random_logps(b=1)
    beta = 0.3
    a, sa = dpo_loss(pc, pr, rc, rr, beta=beta)
    b, sb = dpo_loss(pr, pc, rr, rc, beta=beta)
    h = sa["reward_margin"].item()
    assert sb["reward_margin"].item() == pytest.approx(-h)
    assert math.exp(-a.item()) + math.exp(-b.item()) == pytest.approx(1.0, rel=1e-12)  # p + (1 - p)
    assert a.item() - b.item() == pytest.approx(-h, rel=1e-10)


def test_dpo_invariant_to_reference_shift_and_to_per_prompt_shift():
    pc, pr, rc, rr = random_logps(b=8, seed=1)
    for loss_type in ("sigmoid", "hinge", "ipo"):
        base, _ = dpo_loss(pc, pr, rc, rr, loss_type=loss_type)
        shifted, _ = dpo_loss(pc, pr, rc + 7.3, rr + 7.3, loss_type=loss_type)
        torch.testing.assert_close(shifted, base, rtol=1e-12, atol=1e-12)
        # a per-prompt constant (e.g. beta log Z(x) in the reward) also cancels
        c = torch.randn(8, dtype=D, generator=torch.Generator().manual_seed(3))
        shifted, _ = dpo_loss(pc + c, pr + c, rc, rr, loss_type=loss_type)
        torch.testing.assert_close(shifted, base, rtol=1e-12, atol=1e-12)


def test_dpo_gradient_weights_autograd():
    """d loss / d log pi(y_w) = -beta sigma(r_hat_l - r_hat_w) / B, and the opposite for y_l."""
    pc, pr, rc, rr = random_logps(b=5, seed=2)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    beta = 0.2
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=beta)
    loss.backward()
    w = torch.sigmoid(stats["rejected_rewards"] - stats["chosen_rewards"])
    torch.testing.assert_close(pc.grad, -beta * w / 5, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pr.grad, beta * w / 5, rtol=1e-12, atol=1e-14)
    # the reference gets no gradient path even if it required one
    assert all(not s.requires_grad for s in stats.values())
    # float64 finite differences agree too
    assert torch.autograd.gradcheck(
        lambda a, b: dpo_loss(a, b, rc, rr, beta=beta)[0], (pc.detach().clone().requires_grad_(), pr.detach().clone().requires_grad_())
    )


def test_dpo_bad_input():
    a = torch.zeros(3, dtype=D)
    with pytest.raises(ValueError, match=r"ref_rejected_logps.*\(3,\).*\(4,\)"):
        dpo_loss(a, a, a, torch.zeros(4, dtype=D))
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(a, a, a, a, loss_type="robust")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(a, a, a, a, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(a, a, a, a, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(a, a, a, a, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="floating"):
        dpo_loss(torch.zeros(3, dtype=torch.long), a, a, a)


# ---------------------------------------------------------------------------- IPO


def test_ipo_minimum_at_half_inverse_tau():
    tau = 0.1
    ref = torch.zeros(1, dtype=D)
    margins = torch.linspace(0, 10, 1001, dtype=D)
    losses = torch.stack([ipo_loss(m.view(1), ref, ref, ref, tau=tau)[0] for m in margins])
    assert margins[losses.argmin()].item() == pytest.approx(1 / (2 * tau))  # 5 nats
    assert losses.min().item() == pytest.approx(0.0, abs=1e-20)
    # gradient zero exactly there, negative below, positive above
    for m, sign in ((5.0, 0), (4.0, -1), (6.0, 1)):
        x = torch.tensor([m], dtype=D, requires_grad=True)
        ipo_loss(x, ref, ref, ref, tau=tau)[0].backward()
        assert torch.sign(x.grad).item() == sign
        assert x.grad.item() == pytest.approx(2 * (m - 5.0))
    # same as dpo_loss(loss_type="ipo", beta=tau)
    pc, pr, rc, rr = random_logps()
    torch.testing.assert_close(ipo_loss(pc, pr, rc, rr, tau=0.3)[0], dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="ipo")[0])


def test_dpo_unbounded_ipo_bounded():
    """On a pair already ordered by a large margin DPO's loss keeps falling while IPO's rises."""
    ref = torch.zeros(1, dtype=D)
    dpo = [dpo_loss(torch.tensor([m], dtype=D), ref, ref, ref, beta=0.1)[0].item() for m in (5, 50, 500)]
    ipo = [ipo_loss(torch.tensor([m], dtype=D), ref, ref, ref, tau=0.1)[0].item() for m in (5, 50, 500)]
    assert dpo[0] > dpo[1] > dpo[2] > 0
    assert ipo[0] < ipo[1] < ipo[2]


# ---------------------------------------------------------------------------- KTO


def test_kto_hand_values():
    pol = torch.tensor([-5.0, -7.0, -6.0], dtype=D)
    ref = torch.tensor([-6.0, -6.5, -6.0], dtype=D)  # r = [1, -0.5, 0]
    labels = torch.tensor([True, False, True])
    kl_pol = torch.tensor([-9.0, -10.0, -8.0], dtype=D)
    kl_ref = torch.tensor([-10.0, -10.0, -10.0], dtype=D)  # mean gap 1.0 -> z = 1
    beta, ld, lu = 0.5, 1.0, 1.5
    loss, stats = kto_loss(pol, ref, labels, kl_pol, kl_ref, beta=beta, desirable_weight=ld, undesirable_weight=lu)
    expected = (ld * (1 - sig(0.5 * (1 - 1))) + lu * (1 - sig(0.5 * (1 + 0.5))) + ld * (1 - sig(0.5 * (0 - 1)))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["kl"].item() == pytest.approx(1.0)
    assert stats["chosen_rewards"].item() == pytest.approx(0.5 * (1 + 0) / 2)
    assert stats["rejected_rewards"].item() == pytest.approx(-0.25)
    # z_ref is clamped at 0 and carries no gradient
    pol_g = pol.clone().requires_grad_(True)
    kl_pol_g = (kl_ref - 3.0).clone().requires_grad_(True)
    loss, stats = kto_loss(pol_g, ref, labels, kl_pol_g, kl_ref, beta=beta)
    assert stats["kl"].item() == 0.0
    loss.backward()
    assert kl_pol_g.grad is None or torch.all(kl_pol_g.grad == 0)
    # without KL tensors z_ref = 0, same as a clamped negative estimate
    torch.testing.assert_close(kto_loss(pol, ref, labels, beta=beta)[0], loss.detach())


def test_kto_gradient_autograd():
    pol = torch.tensor([-5.0, -7.0], dtype=D, requires_grad=True)
    ref = torch.tensor([-6.0, -6.5], dtype=D)
    labels = torch.tensor([1, 0])
    z, beta = 0.4, 0.3
    loss, _ = kto_loss(pol, ref, labels, ref + z, ref, beta=beta)  # KL batch gap exactly z
    loss.backward()
    r = (pol - ref).detach()
    s_d = torch.sigmoid(beta * (r[0] - z))
    s_u = torch.sigmoid(beta * (z - r[1]))
    # desirable: descent raises r; undesirable: descent lowers r
    expected = torch.stack([-beta * s_d * (1 - s_d), beta * s_u * (1 - s_u)]) / 2
    torch.testing.assert_close(pol.grad, expected, rtol=1e-12, atol=1e-15)


def test_kto_one_label_kind_is_handled():
    """Decision: a batch of only desirable (or only undesirable) examples is allowed, as in TRL;
    the loss is the mean over the examples present and the missing kind's reward stat is NaN."""
    pol = torch.tensor([-5.0, -7.0], dtype=D)
    ref = torch.tensor([-6.0, -6.5], dtype=D)
    loss, stats = kto_loss(pol, ref, torch.tensor([True, True]), beta=0.5)
    expected = ((1 - sig(0.5)) + (1 - sig(-0.25))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert math.isnan(stats["rejected_rewards"].item())
    loss, stats = kto_loss(pol, ref, torch.tensor([False, False]), beta=0.5)
    assert loss.item() == pytest.approx(((1 - sig(-0.5)) + (1 - sig(0.25))) / 2, rel=1e-12)
    assert math.isnan(stats["chosen_rewards"].item())


def test_kto_bad_input():
    a = torch.zeros(3, dtype=D)
    with pytest.raises(ValueError, match="labels"):
        kto_loss(a, a, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="0/1"):
        kto_loss(a, a, torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="ref_logps"):
        kto_loss(a, torch.zeros(2, dtype=D), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="neither"):
        kto_loss(a, a, torch.tensor([1, 0, 1]), policy_kl_logps=a)
    with pytest.raises(ValueError, match="empty"):
        kto_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.bool))


# ---------------------------------------------------------------------------- ORPO, SimPO, CPO


def test_log1mexp_accuracy():
    x = torch.tensor([-1e-20, -1e-8, -0.5, -math.log(2), -1.0, -30.0, -800.0], dtype=D)
    naive = torch.log(1 - torch.exp(x.to(torch.float64)))
    got = log1mexp(x)
    # exact reference values via mpmath-free identities
    assert got[0].item() == pytest.approx(math.log(1e-20), rel=1e-12)  # log(1 - e^-eps) ~ log eps
    assert got[1].item() == pytest.approx(math.log(-math.expm1(-1e-8)), rel=1e-12)
    assert got[-1].item() == 0.0 and got[-2].item() == pytest.approx(-math.exp(-30.0), rel=1e-10)
    torch.testing.assert_close(got[2:5], naive[2:5], rtol=1e-12, atol=0)
    # float32 near 0: the naive form gives -inf, log1mexp stays finite
    x32 = torch.tensor([-1e-10])
    assert torch.isinf(torch.log(1 - torch.exp(x32))).item()
    assert torch.isfinite(log1mexp(x32)).item()
    # finite gradients in both branches, even where exp(x) rounds to 1 in float32
    x = torch.tensor([-1e-30, -1e-8, -0.3, -5.0, -800.0], requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    xd = torch.tensor([-1e-3, -0.3, -0.69, -0.7, -5.0], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(log1mexp, (xd,))


def test_orpo_hand_value():
    # P_w = 0.5 (odds 1), P_l = 0.2 (odds 0.25): log odds ratio = log 4
    pc = torch.tensor([math.log(0.5)], dtype=D)
    pr = torch.tensor([math.log(0.2)], dtype=D)
    loss, stats = orpo_loss(pc, pr, lam=0.1)
    l_or = -math.log(sig(math.log(4.0)))  # = -log(4/5)
    assert stats["or_loss"].item() == pytest.approx(l_or, rel=1e-12)
    assert stats["log_odds_chosen"].item() == pytest.approx(math.log(4.0), rel=1e-12)
    assert loss.item() == pytest.approx(math.log(2) + 0.1 * l_or, rel=1e-12)  # nll default: -mean(log P_w)
    nll = torch.tensor(1.7, dtype=D)
    assert orpo_loss(pc, pr, nll, lam=0.3)[0].item() == pytest.approx(1.7 + 0.3 * l_or, rel=1e-12)


def test_orpo_rejects_logp_at_or_above_zero_and_is_stable_near_it():
    """Decision: log P >= 0 raises (odds of a sure event are infinite), rather than a NaN."""
    for bad in (0.0, 0.1):
        with pytest.raises(ValueError, match="< 0"):
            orpo_loss(torch.tensor([bad]), torch.tensor([-1.0]))
        with pytest.raises(ValueError, match="policy_rejected_logps"):
            orpo_loss(torch.tensor([-1.0]), torch.tensor([bad]))
    pc = torch.tensor([-1e-9, -3.0], requires_grad=True)  # float32, P_w within 1e-9 of 1
    loss, _ = orpo_loss(pc, torch.tensor([-2.0, -50.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pc.grad).all()


def test_orpo_gradient_autograd():
    pc = torch.tensor([-0.4, -1.2, -3.0], dtype=D, requires_grad=True)
    pr = torch.tensor([-0.9, -0.7, -5.0], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: orpo_loss(a, b, lam=0.2)[0], (pc, pr))


def test_simpo_hand_value_and_length_invariance():
    pc = torch.tensor([-1.0], dtype=D)
    pr = torch.tensor([-1.5], dtype=D)
    loss, stats = simpo_loss(pc, pr, beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(-math.log(sig(2.0 * 0.5 - 0.5)), rel=1e-12)
    assert stats["reward_margin"].item() == pytest.approx(1.0)
    # margin gamma: loss at equal averages is -log sigma(-gamma) > log 2
    assert simpo_loss(pc, pc, gamma=1.0)[0].item() == pytest.approx(-math.log(sig(-1.0)))
    # gamma = 0 and beta = 1 is Bradley-Terry on the averaged log-probs
    torch.testing.assert_close(simpo_loss(pc, pr, beta=1.0, gamma=0.0)[0], bradley_terry_loss(pc, pr)[0])


def test_cpo_hand_value():
    pc = torch.tensor([-10.0, -20.0], dtype=D)
    pr = torch.tensor([-12.0, -19.0], dtype=D)
    loss, stats = cpo_loss(pc, pr, beta=0.5, alpha=1.0)
    pref = (-math.log(sig(1.0)) - math.log(sig(-0.5))) / 2
    assert stats["preference_loss"].item() == pytest.approx(pref, rel=1e-12)
    assert loss.item() == pytest.approx(pref + 15.0, rel=1e-12)
    # alpha = 0 is DPO with a uniform reference
    zero = torch.zeros(2, dtype=D)
    torch.testing.assert_close(cpo_loss(pc, pr, beta=0.5, alpha=0.0)[0], dpo_loss(pc, pr, zero, zero, beta=0.5)[0])
    with pytest.raises(ValueError, match="chosen_nll"):
        cpo_loss(pc, pr, chosen_nll=torch.ones(2, dtype=D))


def test_reference_free_bad_input():
    a = torch.full((3,), -1.0)
    for fn in (orpo_loss, simpo_loss, cpo_loss):
        with pytest.raises(ValueError, match=r"\(3,\)"):
            fn(a, torch.full((2,), -1.0))


# ---------------------------------------------------------------------------- RRHF


def test_rrhf_hand_value():
    logps = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D)  # p
    rewards = torch.tensor([[0.0, 1.0, 2.0]], dtype=D)  # candidate 2 best, then 1, then 0
    sft = torch.tensor([[-10.0, -20.0, -5.0]], dtype=D)
    loss, stats = rrhf_loss(logps, rewards, sft, sft_weight=1.0)
    # pairs (worse i, better j): (0,1): relu(-1 + 2) = 1; (0,2): relu(-1 + 0.5) = 0; (1,2): relu(-2 + 0.5) = 0
    assert stats["rank_loss"].item() == pytest.approx(1.0)
    assert stats["sft_loss"].item() == pytest.approx(5.0)
    assert loss.item() == pytest.approx(6.0)
    assert stats["pair_accuracy"].item() == pytest.approx(2 / 3)
    # ties in reward are skipped; the first maximal candidate is the SFT target
    loss, stats = rrhf_loss(logps, torch.tensor([[1.0, 1.0, 0.0]], dtype=D), sft)
    # pairs: (2,0): relu(-0.5 + 1) = 0.5; (2,1): relu(-0.5 + 2) = 1.5
    assert stats["rank_loss"].item() == pytest.approx(2.0)
    assert stats["sft_loss"].item() == pytest.approx(10.0)


def test_rrhf_gradient_and_bad_input():
    g = torch.Generator().manual_seed(0)
    logps = (-torch.rand(4, 5, generator=g, dtype=D)).requires_grad_(True)
    rewards = torch.randn(4, 5, generator=g, dtype=D)
    loss, _ = rrhf_loss(logps, rewards)
    loss.backward()
    # brute force: d/dp_k of sum over (i worse than j) relu(p_i - p_j), minus 1 at the best candidate
    expected = torch.zeros(4, 5, dtype=D)
    p = logps.detach()
    for b in range(4):
        for i in range(5):
            for j in range(5):
                if rewards[b, i] < rewards[b, j] and p[b, i] > p[b, j]:
                    expected[b, i] += 1
                    expected[b, j] -= 1
        expected[b, rewards[b].argmax()] -= 1
    torch.testing.assert_close(logps.grad, expected / 4)
    with pytest.raises(ValueError, match="K >= 2"):
        rrhf_loss(torch.zeros(2, 1, dtype=D), torch.zeros(2, 1, dtype=D))
    with pytest.raises(ValueError, match="rewards"):
        rrhf_loss(torch.zeros(2, 3, dtype=D), torch.zeros(2, 4, dtype=D))
    with pytest.raises(ValueError, match="dimension"):
        rrhf_loss(torch.zeros(3, dtype=D), torch.zeros(3, dtype=D))
