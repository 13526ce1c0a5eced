"""minirl.kl: estimators (closed forms, unbiasedness, signs), exact categorical KL, controllers."""
import math

import pytest
import torch

from minirl import kl


def _gaussian_log_r(mu, n, seed=0):
    """x ~ q = N(0,1), p = N(mu,1): log r = log p(x) - log q(x) = mu x - mu^2 / 2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return mu * x - mu**2 / 2


@pytest.mark.parametrize("mu", [0.1, 1.0])
def test_schulman_table_closed_forms(mu):
    n = 2_000_000
    log_r = _gaussian_log_r(mu, n)
    true = mu**2 / 2
    # k1: unbiased, stdev/true = 2/mu
    e1 = kl.k1(log_r)
    se1 = e1.std().item() / math.sqrt(n)
    assert abs(e1.mean().item() - true) < 5 * se1
    assert e1.std().item() / true == pytest.approx(2 / mu, rel=0.01)
    # k2: bias/true = mu^2/4, stdev/true = sqrt(mu^2 + 2)
    e2 = kl.k2(log_r)
    assert (e2.mean().item() - true) / true == pytest.approx(mu**2 / 4, abs=5 * e2.std().item() / math.sqrt(n) / true)
    assert e2.std().item() / true == pytest.approx(math.sqrt(mu**2 + 2), rel=0.01)
    # k3: unbiased, stdev/true = sqrt(e^{mu^2} - 1 - mu^2) / (mu^2/2)
    e3 = kl.k3(log_r)
    assert abs(e3.mean().item() - true) < 5 * e3.std().item() / math.sqrt(n)
    assert e3.std().item() / true == pytest.approx(math.sqrt(math.exp(mu**2) - 1 - mu**2) / true, rel=0.02)


def test_signs_and_zero():
    log_r = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert (kl.k2(log_r) >= 0).all() and (kl.k3(log_r) >= 0).all()
    assert (kl.k1(log_r) < 0).any()  # k1 can be negative per sample
    z = torch.zeros(3, dtype=torch.float64)
    for f in (kl.k1, kl.k2, kl.k3):
        assert torch.equal(f(z), z)


def test_k3_is_accurate_near_one():
    log_r = torch.tensor([1e-9], dtype=torch.float64)
    assert kl.k3(log_r).item() == pytest.approx(0.5e-18, rel=1e-6)  # ~ (log r)^2 / 2


def test_estimators_reject_integer_input():
    with pytest.raises(ValueError, match="floating"):
        kl.k3(torch.tensor([1, 2]))


def test_categorical_kl_matches_enumeration_and_estimators():
    g = torch.Generator().manual_seed(1)
    lq = torch.randn(4, 7, generator=g, dtype=torch.float64)
    lp = torch.randn(4, 7, generator=g, dtype=torch.float64)
    q, p = lq.softmax(-1), lp.softmax(-1)
    exact = (q * (q.log() - p.log())).sum(-1)
    torch.testing.assert_close(kl.categorical_kl(lq, lp), exact)
    # E_q[k1] and E_q[k3] equal the exact KL when the expectation is taken by enumeration
    log_r = p.log() - q.log()
    torch.testing.assert_close((q * kl.k1(log_r)).sum(-1), exact)
    torch.testing.assert_close((q * kl.k3(log_r)).sum(-1), exact)
    assert (kl.categorical_kl(lq, lq).abs() < 1e-12).all()


def test_categorical_kl_zero_probability_and_errors():
    lq = torch.tensor([0.0, -float("inf")])
    lp = torch.tensor([0.0, 0.0])
    assert kl.categorical_kl(lq, lp).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="same shape"):
        kl.categorical_kl(torch.zeros(3), torch.zeros(4))


def test_categorical_kl_gradient_float64():
    g = torch.Generator().manual_seed(2)
    lq = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    lp = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kl.categorical_kl, (lq, lp))


@pytest.mark.parametrize("current,expected", [(12, 0.151536), (6, 0.15), (3, 0.148464)])
def test_adaptive_controller_reference_numbers(current, expected):
    c = kl.AdaptiveKLController(0.15, target=6, horizon=10000)
    assert c.update(current, n_steps=512) == pytest.approx(expected, abs=1e-12)
    assert c.value == pytest.approx(expected, abs=1e-12)


def test_adaptive_controller_clips_error_and_fixed_controller():
    c = kl.AdaptiveKLController(0.1, target=1, horizon=100)
    c.update(1000.0, n_steps=10)  # error clipped to +0.2
    assert c.value == pytest.approx(0.1 * 1.02)
    f = kl.FixedKLController(0.05)
    assert f.update(100.0, 10) == 0.05
    with pytest.raises(ValueError):
        c.update(float("nan"), 10)
    with pytest.raises(ValueError):
        kl.AdaptiveKLController(0.0, 6, 10000)


# --- lesson 02 helpers: Gaussian closed forms and exact expected gradients -------------------


@pytest.mark.parametrize("mu", [0.1, 1.0, 2.0])
def test_gaussian_estimator_moments_match_quadrature(mu):
    """The closed forms against Gauss-Hermite quadrature (exact for polynomials, tight for exp)."""
    import numpy as np

    nodes, w = np.polynomial.hermite_e.hermegauss(80)  # E_{x~N(0,1)}[f] = sum w f(x) / sqrt(2 pi)
    w = w / math.sqrt(2 * math.pi)
    log_r = torch.tensor(mu * nodes - mu**2 / 2)
    moments = kl.gaussian_estimator_moments(mu)
    assert moments["kl"] == (mu**2 / 2, 0.0)
    for name, f in (("k1", kl.k1), ("k2", kl.k2), ("k3", kl.k3)):
        v = f(log_r).numpy()
        mean = float((w * v).sum())
        std = math.sqrt(float((w * (v - mean) ** 2).sum()))
        assert moments[name][0] == pytest.approx(mean, rel=1e-10)
        assert moments[name][1] == pytest.approx(std, rel=1e-8)


def test_gaussian_moments_reproduce_schulman_table():
    for mu, rows in {0.1: {"k2": (0.0025, 1.4177), "k3": (0.0, 1.4166)},
                     1.0: {"k2": (0.25, 1.7321), "k3": (0.0, 1.6950)}}.items():
        m = kl.gaussian_estimator_moments(mu)
        true = mu**2 / 2
        assert m["k1"][1] / true == pytest.approx(2 / mu)
        for name, (bias, sd) in rows.items():
            assert (m[name][0] - true) / true == pytest.approx(bias, abs=1e-12)
            assert m[name][1] / true == pytest.approx(sd, abs=1e-4)
    with pytest.raises(ValueError, match="non-zero"):
        kl.gaussian_estimator_moments(0.0)


def _autograd_kl_grads(theta, ref):
    t = theta.clone().requires_grad_(True)
    fwd = torch.autograd.grad(kl.categorical_kl(t, ref).sum(), t)[0]  # grad KL(q || p)
    t = theta.clone().requires_grad_(True)
    rev = torch.autograd.grad(kl.categorical_kl(ref, t).sum(), t)[0]  # grad KL(p || q)
    return fwd, rev


def test_expected_estimator_gradients_identities():
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(4, 6, generator=g, dtype=torch.float64)
    ref = torch.randn(4, 6, generator=g, dtype=torch.float64)
    fwd, rev = _autograd_kl_grads(theta, ref)
    grad = kl.expected_estimator_gradient
    torch.testing.assert_close(grad(kl.k1, theta, ref, "reward"), fwd)  # REINFORCE with k1
    torch.testing.assert_close(grad(kl.k2, theta, ref, "loss"), fwd)  # k2 in the loss
    torch.testing.assert_close(grad(kl.k3, theta, ref, "loss"), rev)  # k3 in the loss: the other direction, KL(p || q)
    torch.testing.assert_close(grad(kl.k1, theta, ref, "loss"), torch.zeros_like(fwd))  # score has mean 0
    torch.testing.assert_close(grad(kl.k3, theta, ref, "reward"), fwd - rev)
    # the directions differ away from p = q, so the k3 identity is not a tautology
    assert (fwd - rev).abs().max() > 0.05
    # score-function + pathwise = the gradient of E_q[k] (the forward KL for unbiased k1, k3)
    for est in (kl.k1, kl.k3):
        torch.testing.assert_close(grad(est, theta, ref, "reward") + grad(est, theta, ref, "loss"), fwd)


def test_expected_estimator_gradient_at_reference_and_errors():
    theta = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    for est in (kl.k1, kl.k2, kl.k3):
        for mode in ("loss", "reward"):
            assert kl.expected_estimator_gradient(est, theta, theta, mode).abs().max() < 1e-15
    with pytest.raises(ValueError, match="mode"):
        kl.expected_estimator_gradient(kl.k3, theta, theta, "both")
    with pytest.raises(ValueError, match="same shape"):
        kl.expected_estimator_gradient(kl.k3, theta, theta[:2])
    with pytest.raises(ValueError, match="floating"):
        kl.expected_estimator_gradient(kl.k3, torch.tensor([1, 2]), torch.tensor([1, 2]))


def test_expected_estimator_gradient_matches_sampled_autograd():
    """Monte Carlo: the batch-mean autograd gradient of k3 in the loss within 5 standard errors."""
    g = torch.Generator().manual_seed(4)
    theta = torch.randn(5, generator=g, dtype=torch.float64)
    ref = torch.randn(5, generator=g, dtype=torch.float64)
    n = 200_000
    x = torch.multinomial(theta.softmax(-1), n, replacement=True, generator=g)
    t = theta.clone().requires_grad_(True)
    log_q = t.log_softmax(-1)[x]
    log_r = ref.log_softmax(-1)[x] - log_q
    mc = torch.autograd.grad(kl.k3(log_r).mean(), t)[0]
    # per-sample gradients (1 - r) (onehot(x) - q) give the standard error of each component
    q = theta.softmax(-1)
    per = (1 - log_r.detach().exp())[:, None] * (torch.nn.functional.one_hot(x, 5) - q)
    torch.testing.assert_close(per.mean(0), mc)
    se = per.std(0) / math.sqrt(n)
    exact = kl.expected_estimator_gradient(kl.k3, theta, ref, "loss")
    assert ((mc - exact).abs() < 5 * se).all()


def test_ratio_times_k3_in_loss_equals_k1_reward_per_sample():
    """k3 times a ratio equal to 1 in value (gradient grad log q, TRL's use_bias_correction_kl on-policy)
    gives, sample by sample, the REINFORCE gradient of k1: the forward KL(q || p) gradient."""
    g = torch.Generator().manual_seed(6)
    theta = torch.randn(7, generator=g, dtype=torch.float64)
    ref = torch.randn(7, generator=g, dtype=torch.float64)
    x = torch.multinomial(theta.softmax(-1), 64, replacement=True, generator=g)

    def batch_grad(surrogate_fn):
        t = theta.clone().requires_grad_(True)
        log_q = t.log_softmax(-1)[x]
        log_r = ref.log_softmax(-1)[x] - log_q
        return torch.autograd.grad(surrogate_fn(log_q, log_r).sum(), t)[0]

    ratio_k3 = batch_grad(lambda lq, lr: torch.exp(lq - lq.detach()) * kl.k3(lr))
    k1_reward = batch_grad(lambda lq, lr: kl.k1(lr).detach() * lq)
    k2_loss = batch_grad(lambda lq, lr: kl.k2(lr))
    torch.testing.assert_close(ratio_k3, k1_reward)
    torch.testing.assert_close(k2_loss, k1_reward)
