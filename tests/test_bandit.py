"""minirl.bandit and minirl.losses.reinforce_loss."""
import pytest
import torch

from minirl.bandit import Bandit, SoftmaxPolicy, kl_regularized_objective, kl_regularized_optimum
from minirl.losses import reinforce_loss


def test_bandit_pull_means_and_errors():
    env = Bandit([1.0, -1.0, 0.5], noise_std=0.5)
    g = torch.Generator().manual_seed(0)
    arms = torch.full((20000,), 2)
    r = env.pull(arms, generator=g)
    assert r.mean().item() == pytest.approx(0.5, abs=0.02)
    assert r.std().item() == pytest.approx(0.5, rel=0.03)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        env.pull(torch.tensor([3]))
    with pytest.raises(ValueError, match="integer"):
        env.pull(torch.tensor([0.0]))
    with pytest.raises(ValueError):
        Bandit([1.0])


def test_optimum_closed_form_and_limits():
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    r = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    beta = 0.7
    unnorm = ref * torch.exp(r / beta)
    torch.testing.assert_close(kl_regularized_optimum(ref, r, beta), unnorm / unnorm.sum())
    # beta -> infinity: pi* -> pi_ref; beta -> 0: pi* -> argmax r
    torch.testing.assert_close(kl_regularized_optimum(ref, r, 1e6), ref, atol=1e-5, rtol=0)
    assert kl_regularized_optimum(ref, r, 1e-3)[1].item() == pytest.approx(1.0)
    # no overflow for huge r / beta
    assert torch.isfinite(kl_regularized_optimum(ref, r * 1e4, 1e-4)).all()
    with pytest.raises(ValueError, match="sum to 1"):
        kl_regularized_optimum(torch.tensor([0.5, 0.6, 0.2], dtype=torch.float64), r, beta)
    with pytest.raises(ValueError, match="beta"):
        kl_regularized_optimum(ref, r, 0.0)


def test_optimum_maximizes_objective():
    g = torch.Generator().manual_seed(3)
    ref = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    r = torch.randn(5, generator=g, dtype=torch.float64)
    beta = 0.5
    star = kl_regularized_optimum(ref, r, beta)
    j_star = kl_regularized_objective(star, ref, r, beta)
    # the optimal value is beta log Z
    z = (ref * torch.exp(r / beta)).sum()
    assert j_star.item() == pytest.approx(beta * torch.log(z).item(), abs=1e-12)
    for _ in range(50):
        other = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
        assert kl_regularized_objective(other, ref, r, beta) <= j_star + 1e-12


def test_softmax_policy_logprob_and_sampling():
    pol = SoftmaxPolicy(3, init_logits=torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(pol.log_prob(torch.tensor([2, 0])), torch.log_softmax(pol.logits, -1)[[2, 0]])
    g = torch.Generator().manual_seed(0)
    a = pol.sample(50000, generator=g)
    freq = torch.bincount(a, minlength=3).double() / 50000
    torch.testing.assert_close(freq, pol.probs().detach(), atol=0.01, rtol=0)
    with pytest.raises(ValueError):
        pol.log_prob(torch.tensor([3]))


def test_reinforce_gradient_is_score_function_estimate():
    pol = SoftmaxPolicy(4, init_logits=torch.tensor([0.1, -0.2, 0.3, 0.0]))
    arms = torch.tensor([0, 2, 2, 3, 1])
    adv = torch.tensor([1.0, -0.5, 2.0, 0.0, 0.3], dtype=torch.float64)
    loss = reinforce_loss(pol.log_prob(arms), adv)
    loss.backward()
    probs = pol.probs().detach()
    manual = torch.zeros(4, dtype=torch.float64)
    for a, A in zip(arms, adv):
        manual += A * (torch.nn.functional.one_hot(a, 4).double() - probs)  # grad log softmax
    torch.testing.assert_close(pol.logits.grad, -manual / len(arms))


def test_reinforce_exact_expectation_equals_true_gradient():
    """Enumerating every arm with weight pi(a), the surrogate gradient is exactly grad E_pi[r]."""
    r = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=torch.float64)
    pol = SoftmaxPolicy(4, init_logits=torch.tensor([0.3, 0.1, -0.4, 0.2]))
    probs = pol.probs()
    arms = torch.arange(4)
    surrogate = -(probs.detach() * r * pol.log_prob(arms)).sum()
    (g_est,) = torch.autograd.grad(surrogate, pol.logits)
    (g_true,) = torch.autograd.grad(-(pol.probs() * r).sum(), pol.logits)
    torch.testing.assert_close(g_est, g_true)


def test_reinforce_loss_masks_and_shapes():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    adv = torch.tensor([1.0, 2.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # tokens under mask 0 do not count, sequence advantages broadcast over tokens
    expected = -(1 * -1 + 1 * -2 + 2 * -0.5 + 2 * -0.5) / 4
    assert reinforce_loss(lp, adv, mask).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="advantages must have shape"):
        reinforce_loss(lp, torch.ones(3), mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        reinforce_loss(lp, adv, torch.ones(2, 2))
    with pytest.raises(ValueError, match="no 1s"):
        reinforce_loss(lp, adv, torch.zeros(2, 3))
