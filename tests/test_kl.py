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
