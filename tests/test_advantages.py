"""minirl.advantages: GAE against the worked example, a brute-force double sum, its limits and
masks; truncation bootstrap; whitening; group baselines (GRPO / Dr. GRPO / RLOO) and TRL's
convention; explained variance."""
import pytest
import torch

from minirl.advantages import (
    discounted_returns,
    explained_variance,
    gae,
    group_advantages,
    rloo_advantages,
    whiten,
)

D = torch.float64


def brute_force_gae(rewards, values, mask, gamma, lam, last_values=None):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the masked-in tokens of each row, as a double sum."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=D)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t] > 0]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx] + [0.0 if last_values is None else last_values[b].item()]
        delta = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(idx))]
        for k, t in enumerate(idx):
            adv[b, t] = sum((gamma * lam) ** l * delta[k + l] for l in range(len(idx) - k))
    return adv


@pytest.mark.parametrize(
    "lam, expected", [(0.95, [0.46575, 0.385, 0.3]), (0.0, [0.1, 0.1, 0.3]), (1.0, [0.5, 0.4, 0.3])]
)
def test_gae_worked_example(lam, expected):
    # SCOPE.md / Schulman et al. 2015: rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma = 1.
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=D)
    v = torch.tensor([[0.5, 0.6, 0.7]], dtype=D)
    adv, ret = gae(r, v, torch.ones_like(r), gamma=1.0, lam=lam)
    torch.testing.assert_close(adv, torch.tensor([expected], dtype=D))
    torch.testing.assert_close(ret, adv + v)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (0.7, 0.0)])
def test_gae_matches_double_sum_random_masks(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    r = torch.randn(B, T, generator=g, dtype=D)
    v = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) < 0.7).to(D)  # arbitrary holes, not only padding
    mask[0] = 0  # a row with nothing to count
    mask[0, 3] = 1
    r = r * mask
    last = torch.randn(B, generator=g, dtype=D)
    for lv in (None, last):
        adv, ret = gae(r, v, mask, gamma=gamma, lam=lam, last_values=lv)
        torch.testing.assert_close(adv, brute_force_gae(r, v, mask, gamma, lam, lv))
        torch.testing.assert_close(ret, (adv + v) * mask)
        assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_limits():
    g = torch.Generator().manual_seed(1)
    B, T, gamma = 4, 7, 0.9
    r, v = torch.randn(B, T, generator=g, dtype=D), torch.randn(B, T, generator=g, dtype=D)
    ones = torch.ones(B, T, dtype=D)
    next_v = torch.cat([v[:, 1:], torch.zeros(B, 1, dtype=D)], 1)
    adv0, _ = gae(r, v, ones, gamma=gamma, lam=0.0)
    torch.testing.assert_close(adv0, r + gamma * next_v - v)  # TD residual
    adv1, ret1 = gae(r, v, ones, gamma=gamma, lam=1.0)
    mc = torch.zeros(B, T, dtype=D)
    for t in range(T):
        mc[:, t] = sum(gamma**l * r[:, t + l] for l in range(T - t))
    torch.testing.assert_close(adv1, mc - v)  # Monte-Carlo return minus value
    torch.testing.assert_close(ret1, mc)
    torch.testing.assert_close(discounted_returns(r, ones, gamma), mc)


def test_gae_padding_left_right_equals_unpadded():
    g = torch.Generator().manual_seed(2)
    lengths = [5, 2, 7, 1]
    T = 8
    rows = [(torch.randn(n, generator=g, dtype=D), torch.randn(n, generator=g, dtype=D)) for n in lengths]
    for side in ("right", "left"):
        r, v, m = torch.zeros(4, T, dtype=D), torch.randn(4, T, generator=g, dtype=D), torch.zeros(4, T, dtype=D)
        for b, (rb, vb) in enumerate(rows):
            sl = slice(0, len(rb)) if side == "right" else slice(T - len(rb), T)
            r[b, sl], v[b, sl], m[b, sl] = rb, vb, 1
        adv, _ = gae(r, v, m, gamma=0.97, lam=0.9)
        for b, (rb, vb) in enumerate(rows):
            sl = slice(0, len(rb)) if side == "right" else slice(T - len(rb), T)
            alone, _ = gae(rb[None], vb[None], None, gamma=0.97, lam=0.9)
            torch.testing.assert_close(adv[b, sl], alone[0])


def test_gae_truncation_bootstrap():
    # A constant reward of 1 forever, gamma = 0.9: V = 10 everywhere. Truncated after 3 steps,
    # bootstrapping with V(s_3) = 10 gives advantages 0; treating the cut as terminal does not.
    r = torch.ones(1, 3, dtype=D)
    v = torch.full((1, 3), 10.0, dtype=D)
    adv, _ = gae(r, v, None, gamma=0.9, lam=0.95, last_values=torch.tensor([10.0], dtype=D))
    torch.testing.assert_close(adv, torch.zeros(1, 3, dtype=D))
    adv_wrong, _ = gae(r, v, None, gamma=0.9, lam=0.95)
    assert adv_wrong[0, -1].item() == pytest.approx(-9.0)  # missing gamma * V(s_3)


def test_gae_bad_inputs():
    r, v = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        gae(r, torch.zeros(2, 4), None)
    with pytest.raises(ValueError, match="padding"):
        gae(torch.ones(2, 3), v, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="finite"):
        gae(r, torch.full((2, 3), float("nan")), None)
    with pytest.raises(ValueError, match="gamma"):
        gae(r, v, None, gamma=1.5)
    with pytest.raises(ValueError, match="last_values"):
        gae(r, v, None, last_values=torch.zeros(3))
    with pytest.raises(ValueError):
        gae(r.long(), v, None)
    # NaN values on padding are fine (ignored)
    v_pad = torch.tensor([[0.1, float("nan")], [0.2, 0.3]])
    adv, _ = gae(torch.zeros(2, 2), v_pad, torch.tensor([[1, 0], [1, 1]]))
    assert torch.isfinite(adv).all()


def test_whiten():
    g = torch.Generator().manual_seed(3)
    x = 3 + 2 * torch.randn(4, 6, generator=g, dtype=D)
    m = (torch.rand(4, 6, generator=g) < 0.6).to(D)
    w = whiten(x, m)
    sel = w[m > 0]
    assert abs(sel.mean().item()) < 1e-12
    assert sel.var(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)  # unbiased var
    assert (w[m == 0] == 0).all()
    w2 = whiten(x, m, shift_mean=False)
    assert w2[m > 0].mean().item() == pytest.approx(x[m > 0].mean().item())
    with pytest.raises(ValueError):
        whiten(x, torch.zeros_like(x))
    # old TRL's whiten (torch.var, unbiased) is this one; lm-human-preferences' (tf.nn.moments,
    # population variance) differs only by the factor sqrt(n / (n - 1)), as the docstring says
    xs = x[m > 0]
    n = xs.numel()
    old_trl = (xs - xs.mean()) * torch.rsqrt(xs.var(unbiased=True) + 1e-8)
    torch.testing.assert_close(sel, old_trl)
    lm_hp = (xs - xs.mean()) * torch.rsqrt(xs.var(unbiased=False) + 1e-8)
    torch.testing.assert_close(lm_hp, sel * (n / (n - 1)) ** 0.5, rtol=1e-6, atol=0)


def test_group_advantages_reference_numbers():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=D)
    grpo = group_advantages(r, 4, scale="group")
    torch.testing.assert_close(grpo, torch.tensor([1, -1, -1, 1], dtype=D) * 0.5 / (0.5773502691896258 + 1e-4))
    assert grpo[0].item() == pytest.approx(0.866, abs=1e-3)  # unbiased std
    # population std would give +-1
    assert (0.5 / r.std(unbiased=False)).item() == pytest.approx(1.0)
    torch.testing.assert_close(group_advantages(r, 4, scale="none"), torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=D))
    torch.testing.assert_close(rloo_advantages(r, 4), torch.tensor([2, -2, -2, 2], dtype=D) / 3)


def test_group_advantages_multiple_groups_and_batch_scale():
    g = torch.Generator().manual_seed(4)
    r = torch.rand(12, generator=g, dtype=D)
    G = 4
    grouped = r.view(3, G)
    c = grouped - grouped.mean(1, keepdim=True)
    torch.testing.assert_close(group_advantages(r, G), (c / (grouped.std(1, keepdim=True) + 1e-4)).reshape(-1))
    torch.testing.assert_close(group_advantages(r, G, scale="batch"), (c / (r.std() + 1e-4)).reshape(-1))
    torch.testing.assert_close(rloo_advantages(r, G), (c * G / (G - 1)).reshape(-1))
    # constant group: advantages 0, not NaN
    assert (group_advantages(torch.ones(4, dtype=D), 4) == 0).all()


def test_group_advantages_match_trl_formula():
    # TRL 1.16 GRPOTrainer: (r - group mean) / (nanstd(group) + 1e-4), nanstd unbiased.
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    g = torch.Generator().manual_seed(5)
    r = torch.rand(8, generator=g)
    ref = (r - r.view(-1, 4).mean(1).repeat_interleave(4)) / (nanstd(r.view(-1, 4), dim=1).repeat_interleave(4) + 1e-4)
    torch.testing.assert_close(group_advantages(r, 4), ref)
    ref_b = (r - r.view(-1, 4).mean(1).repeat_interleave(4)) / (nanstd(r) + 1e-4)
    torch.testing.assert_close(group_advantages(r, 4, scale="batch"), ref_b)


def test_group_bad_inputs():
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(torch.zeros(5), 4)
    with pytest.raises(ValueError, match="multiple"):
        rloo_advantages(torch.zeros(0), 2)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)


def test_explained_variance():
    g = torch.Generator().manual_seed(6)
    ret = torch.randn(3, 5, generator=g, dtype=D)
    m = torch.ones_like(ret)
    m[0, 3:] = 0
    assert explained_variance(ret, ret, m).item() == pytest.approx(1.0)
    const = torch.full_like(ret, 0.3)
    assert explained_variance(const, ret, m).item() == pytest.approx(0.0, abs=1e-12)
    assert explained_variance(-ret, ret, m).item() < 0
    assert torch.isnan(explained_variance(ret, torch.ones_like(ret)))


def test_toy_mdp_exact_quantities():
    """The token chain behind lessons 06-07: DP values, Eq. (7) gradient vs autograd, expected GAE."""
    from minirl import toy_mdp

    g = torch.Generator().manual_seed(7)
    chain = toy_mdp.make_chain(4, 3, 5, slip=0.3, generator=g)
    logits = torch.randn(5, 4, 3, generator=g, dtype=D, requires_grad=True)
    probs = torch.softmax(logits, -1)
    V, Q = toy_mdp.exact_values(chain, probs.detach(), 1.0)
    A = Q - V[:-1, :, None]
    (grad,) = torch.autograd.grad(toy_mdp.expected_return(chain, probs), logits)
    torch.testing.assert_close(toy_mdp.expected_score_gradient(chain, probs.detach(), A), grad.reshape(-1))
    # exact critic: expected GAE is the advantage for every lambda
    for lam in (0.0, 0.5, 1.0):
        torch.testing.assert_close(toy_mdp.expected_gae(chain, probs.detach(), V, 1.0, lam), A)
    d = toy_mdp.state_distribution(chain, probs.detach())
    torch.testing.assert_close(d.sum(1), torch.ones(5, dtype=D))
    batch = toy_mdp.sample(chain, probs.detach(), 4000, generator=g)
    mc_J = batch["rewards"].sum(1).mean().item()
    assert abs(mc_J - toy_mdp.expected_return(chain, probs.detach()).item()) < 4 * batch["rewards"].sum(1).std().item() / 4000**0.5
    assert toy_mdp.policy_kl(chain, logits.detach(), logits.detach()).item() == 0
    from minirl.kl import categorical_kl

    other = torch.randn(5, 4, 3, generator=g, dtype=D)
    torch.testing.assert_close(toy_mdp.log_softmax(other), torch.log_softmax(other, -1))
    want = (d * categorical_kl(logits.detach(), other)).sum() / 5
    torch.testing.assert_close(toy_mdp.policy_kl(chain, logits.detach(), other), want)
    with pytest.raises(ValueError):
        toy_mdp.exact_values(chain, probs.detach()[:, :, :2], 1.0)
