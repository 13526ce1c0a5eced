"""minirl.losses PPO: the clip regions and their zero gradients, equality with REINFORCE at ratio 1,
the clipped value loss, token-weighted micro-batches, the diagnostics, and bad inputs."""
import pytest
import torch

from minirl.losses import ppo_policy_loss, ppo_value_loss, reinforce_loss

D = torch.float64


def _grad_wrt_ratio(ratio, adv, eps=0.2):
    log_new = torch.log(torch.tensor([ratio], dtype=D)).requires_grad_(True)
    loss, stats = ppo_policy_loss(log_new, torch.zeros(1, dtype=D), torch.tensor([adv], dtype=D), clip_eps=eps)
    (g,) = torch.autograd.grad(loss, log_new)
    return loss.item(), g.item(), stats["clipfrac"].item()


@pytest.mark.parametrize(
    "ratio, adv, clipped",
    [
        (1.5, 1.0, True),  # A > 0, ratio above 1 + eps: no incentive to go further
        (0.5, 1.0, False),  # A > 0, ratio below 1 - eps: still pushed up
        (0.5, -1.0, True),  # A < 0, ratio below 1 - eps: no incentive to go further down
        (1.5, -1.0, False),  # A < 0, ratio above 1 + eps: pushed back down
        (1.1, 1.0, False),
        (0.9, -1.0, False),
    ],
)
def test_clip_regions(ratio, adv, clipped):
    loss, g, clipfrac = _grad_wrt_ratio(ratio, adv)
    if clipped:
        assert g == 0.0 and clipfrac == 1.0
        assert loss == pytest.approx(-adv * min(max(ratio, 0.8), 1.2))
    else:
        # d(-A * ratio)/d log ratio = -A * ratio
        assert g == pytest.approx(-adv * ratio) and clipfrac == 0.0
        assert loss == pytest.approx(-adv * ratio)


def test_equals_reinforce_at_ratio_one():
    g = torch.Generator().manual_seed(0)
    B, T = 5, 7
    logits = torch.randn(B, T, generator=g, dtype=D, requires_grad=True)
    logprobs = torch.nn.functional.logsigmoid(logits)
    adv = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) < 0.8).to(D)
    loss, stats = ppo_policy_loss(logprobs, logprobs.detach(), adv, mask)
    (g_ppo,) = torch.autograd.grad(loss, logits)
    (g_rf,) = torch.autograd.grad(reinforce_loss(torch.nn.functional.logsigmoid(logits), adv, mask), logits)
    torch.testing.assert_close(g_ppo, g_rf, rtol=1e-12, atol=1e-14)
    assert stats["clipfrac"].item() == 0 and stats["approx_kl"].item() == 0 and stats["ratio_mean"].item() == 1


def test_sequence_level_advantages_broadcast():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(3, 4, generator=g, dtype=D)
    old = lp + 0.1 * torch.randn(3, 4, generator=g, dtype=D)
    a = torch.randn(3, generator=g, dtype=D)
    l1, _ = ppo_policy_loss(lp, old, a)
    l2, _ = ppo_policy_loss(lp, old, a[:, None].expand(3, 4).clone())
    torch.testing.assert_close(l1, l2)


def test_microbatch_gradient_equals_full_batch():
    g = torch.Generator().manual_seed(2)
    B, T = 8, 6
    theta = torch.randn(B, T, generator=g, dtype=D, requires_grad=True)
    old = (theta + 0.3 * torch.randn(B, T, generator=g, dtype=D)).detach()
    adv = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) < 0.6).to(D)
    mask[:, 0] = 1
    full, _ = ppo_policy_loss(theta, old, adv, mask)
    (g_full,) = torch.autograd.grad(full, theta)
    total = mask.sum()
    acc = torch.zeros_like(theta)
    for idx in torch.arange(B).split(3):  # unequal micro-batches (3, 3, 2) with unequal token counts
        loss_mb, _ = ppo_policy_loss(theta[idx], old[idx], adv[idx], mask[idx])
        (gm,) = torch.autograd.grad(loss_mb * mask[idx].sum() / total, theta)  # weight by token share
        acc += gm
    torch.testing.assert_close(acc, g_full)
    # the naive average of micro-batch means is a different (wrong) gradient here
    naive = torch.zeros_like(theta)
    for idx in torch.arange(B).split(3):
        (gm,) = torch.autograd.grad(ppo_policy_loss(theta[idx], old[idx], adv[idx], mask[idx])[0] / 3, theta)
        naive += gm
    assert not torch.allclose(naive, g_full)


def test_diagnostics():
    log_ratio = torch.tensor([[0.3, -0.3, 0.05, 2.0]], dtype=D)
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=D)
    _, s = ppo_policy_loss(log_ratio, torch.zeros_like(log_ratio), adv, mask)
    lr = log_ratio[0, :3]
    assert s["approx_kl"].item() == pytest.approx(((lr.exp() - 1) - lr).mean().item())
    assert s["approx_kl_k2"].item() == pytest.approx((0.5 * lr**2).mean().item())
    assert s["approx_kl_k1"].item() == pytest.approx((-lr).mean().item())
    assert s["clipfrac"].item() == pytest.approx(2 / 3)  # the padded ratio e^2 does not count
    assert s["ratio_max"].item() == pytest.approx(torch.exp(torch.tensor(0.3)).item())


def test_no_clip_is_importance_sampling():
    lp = torch.tensor([0.5, -0.5], dtype=D)
    adv = torch.tensor([1.0, -2.0], dtype=D)
    loss, s = ppo_policy_loss(lp, torch.zeros(2, dtype=D), adv, clip_eps=None)
    assert loss.item() == pytest.approx(-(adv * lp.exp()).mean().item())
    assert s["clipfrac"].item() == 0


@pytest.mark.parametrize(
    "v, old, ret, expected_loss, clipped",
    [
        (1.0, 0.9, 1.5, 0.5 * 0.25, False),  # inside the band: plain 0.5 * (v - R)^2
        (1.5, 1.0, 2.0, 0.5 * 0.8**2, True),  # moved +0.5 toward R: clipped to 1.2, error 0.8 > 0.5
        (1.5, 1.0, 1.0, 0.5 * 0.25, False),  # moved away from R: the unclipped error is larger
        (0.5, 1.0, 0.0, 0.5 * 0.8**2, True),  # moved -0.5 toward R: clipped to 0.8
    ],
)
def test_value_clipping_cases(v, old, ret, expected_loss, clipped):
    vt = torch.tensor([v], dtype=D, requires_grad=True)
    loss, s = ppo_value_loss(vt, torch.tensor([old], dtype=D), torch.tensor([ret], dtype=D), clip_eps=0.2)
    assert loss.item() == pytest.approx(expected_loss)
    (g,) = torch.autograd.grad(loss, vt)
    if clipped:
        assert g.item() == 0.0 and s["vf_clipfrac"].item() == 1.0
    else:
        assert g.item() == pytest.approx(v - ret) and s["vf_clipfrac"].item() == 0.0
    assert s["value_mse"].item() == pytest.approx((v - ret) ** 2)


def test_value_loss_mask_and_no_clip():
    v = torch.tensor([[1.0, 2.0, float("nan")]], dtype=D)
    ret = torch.tensor([[0.0, 0.0, 5.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    loss, _ = ppo_value_loss(v, v, ret, mask, clip_eps=None)
    assert loss.item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        ppo_policy_loss(x, torch.zeros(2, 4), x)
    with pytest.raises(ValueError, match="finite"):
        ppo_policy_loss(x, x, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_policy_loss(x, x, x, clip_eps=1.5)
    with pytest.raises(ValueError, match="mask"):
        ppo_policy_loss(x, x, x, torch.ones(3, 2))
    with pytest.raises(ValueError, match="no 1s"):
        ppo_policy_loss(x, x, x, torch.zeros(2, 3))
    with pytest.raises(ValueError):
        ppo_policy_loss(x.long(), x, x)
    with pytest.raises(ValueError, match="finite"):
        ppo_value_loss(x, x, torch.full((2, 3), float("inf")))
    with pytest.raises(ValueError, match="shape"):
        ppo_value_loss(x, x, torch.zeros(3))
    with pytest.raises(FloatingPointError):
        # a ratio that overflows with a negative advantage: the loss is +inf
        ppo_policy_loss(torch.full((1,), 1000.0), torch.zeros(1), torch.full((1,), -1.0))
