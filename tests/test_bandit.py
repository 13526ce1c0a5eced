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


# ---- lesson 01: exact gradients, baselines, the regularized objective, train_reinforce ----
from minirl.bandit import expected_reward_gradient, train_reinforce  # noqa: E402


def _random_problem(seed, k=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, generator=g, dtype=torch.float64)
    ref = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), -1)
    r = torch.randn(k, generator=g, dtype=torch.float64)
    return logits, ref, r


def test_expected_reward_gradient_matches_autograd():
    for seed in range(3):
        logits, _, r = _random_problem(seed)
        theta = logits.clone().requires_grad_()
        (auto,) = torch.autograd.grad((torch.softmax(theta, -1) * r).sum(), theta)
        torch.testing.assert_close(expected_reward_gradient(torch.softmax(logits, -1), r), auto)
    with pytest.raises(ValueError, match=r"\(K,\)"):
        expected_reward_gradient(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.ones(3, dtype=torch.float64))


def test_softmax_score_and_baseline_invariance_by_enumeration():
    logits, _, r = _random_problem(4)
    probs = torch.softmax(logits, -1)
    jac = torch.autograd.functional.jacobian(lambda th: torch.log_softmax(th, -1), logits)
    score = torch.eye(5, dtype=torch.float64) - probs  # row a: e_a - pi
    torch.testing.assert_close(jac, score)
    torch.testing.assert_close((probs[:, None] * score).sum(0), torch.zeros(5, dtype=torch.float64))
    exact = expected_reward_gradient(probs, r)
    for b in [0.0, -3.0, 2.5, float((probs * r).sum())]:  # any action-independent baseline: same mean
        torch.testing.assert_close((probs[:, None] * (r - b)[:, None] * score).sum(0), exact)


def test_gibbs_identity_and_regularized_gradient():
    logits, ref, r = _random_problem(5)
    beta = 0.7
    star = kl_regularized_optimum(ref, r, beta)
    log_z = torch.logsumexp(ref.log() + r / beta, -1)
    probs = torch.softmax(logits, -1)
    kl_to_star = (probs * (probs / star).log()).sum()
    # Eq. (13): J_beta(pi) = beta log Z - beta KL(pi || pi*)
    torch.testing.assert_close(kl_regularized_objective(probs, ref, r, beta), beta * log_z - beta * kl_to_star)
    # Eq. (14): r = beta log(pi*/pi_ref) + beta log Z
    torch.testing.assert_close(beta * (star / ref).log() + beta * log_z, r)
    # Eq. (16): E_pi[(r - beta log(pi/pi_ref)) (e_a - pi)] is the exact gradient of J_beta
    theta = logits.clone().requires_grad_()
    (auto,) = torch.autograd.grad(kl_regularized_objective(torch.softmax(theta, -1), ref, r, beta), theta)
    r_tilde = r - beta * (probs.log() - ref.log())
    score = torch.eye(5, dtype=torch.float64) - probs
    torch.testing.assert_close((probs[:, None] * r_tilde[:, None] * score).sum(0), auto)


def test_train_reinforce_converges_to_kl_optimum():
    means = torch.tensor([1.0, 1.8, 1.2, 0.4, 1.5], dtype=torch.float64)
    ref = torch.tensor([0.15, 0.05, 0.40, 0.30, 0.10], dtype=torch.float64)
    env = Bandit(means, noise_std=0.5)
    beta = 0.5
    pol = SoftmaxPolicy(5, init_logits=ref.log())
    hist = train_reinforce(env, pol, steps=800, batch_size=64, lr=1.0, beta=beta, ref_probs=ref,
                           generator=torch.Generator().manual_seed(0))
    star = kl_regularized_optimum(ref, means, beta)
    assert 0.5 * (pol.probs().detach() - star).abs().sum() < 0.03
    assert len(hist["probs"]) == len(hist["objective"]) == 801
    torch.testing.assert_close(torch.tensor(hist["probs"][-1], dtype=torch.float64), pol.probs().detach())
    # the logged objective is exact and never above the optimum beta log Z
    log_z = torch.logsumexp(ref.log() + means / beta, -1)
    assert max(hist["objective"]) <= beta * log_z.item() + 1e-12
    torch.testing.assert_close(
        torch.tensor(hist["objective"][-1], dtype=torch.float64),
        kl_regularized_objective(pol.probs().detach(), ref, means, beta),
    )


def test_train_reinforce_plain_is_deterministic_and_finds_best_arm():
    env = Bandit([0.2, 1.0, 0.5], noise_std=0.3)

    def run():
        pol = SoftmaxPolicy(3)
        h = train_reinforce(env, pol, steps=200, batch_size=16, lr=1.0, baseline="ema",
                            lr_schedule="constant", generator=torch.Generator().manual_seed(3))
        return pol, h

    (p1, h1), (p2, h2) = run(), run()
    assert torch.equal(p1.logits, p2.logits) and h1["expected_reward"] == h2["expected_reward"]
    assert h1["expected_reward"][-1] > 0.95 and h1["kl"] == [0.0] * 201


def test_train_reinforce_validates_inputs():
    env = Bandit([0.0, 1.0])
    pol = SoftmaxPolicy(2)
    with pytest.raises(ValueError, match="ref_probs"):
        train_reinforce(env, pol, steps=1, batch_size=1, lr=0.1, beta=0.1)
    with pytest.raises(ValueError, match="baseline"):
        train_reinforce(env, pol, steps=1, batch_size=1, lr=0.1, baseline="mean")
    with pytest.raises(ValueError, match="lr_schedule"):
        train_reinforce(env, pol, steps=1, batch_size=1, lr=0.1, lr_schedule="cosine")
    with pytest.raises(ValueError, match="arms"):
        train_reinforce(env, SoftmaxPolicy(3), steps=1, batch_size=1, lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        train_reinforce(env, pol, steps=1, batch_size=1, lr=0.1, beta=0.1,
                        ref_probs=torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="lr"):
        train_reinforce(env, pol, steps=1, batch_size=1, lr=0.0)
