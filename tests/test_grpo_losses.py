"""minirl.losses.grpo_loss and DAPO's reward-side pieces: the on-policy limit under each normalizer
(value and per-token gradient weights), GSPO's sequence ratio, the clip regions with clip-higher,
the k3 KL term with and without the ratio, float64 gradient checks, micro-batching, bad inputs."""
import pytest
import torch

from minirl.advantages import (
    dynamic_sampling_filter,
    frac_reward_zero_std,
    group_advantages,
    overlong_penalty,
)
from minirl.losses import grpo_loss, ppo_policy_loss

D = torch.float64
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
L_MAX = 9


def batch(seed=0, B=6, T=7):
    """Random (B, T) log-probs, right-padded unequal lengths 1..T, garbage (NaN) on padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    lp = -3 * torch.rand(B, T, generator=g, dtype=D)
    old = lp + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    ref = lp + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, generator=g, dtype=D)
    nan = torch.full_like(lp, float("nan"))
    lp, old, ref = (torch.where(mask, x, nan) for x in (lp, old, ref))
    return lp.requires_grad_(True), old, ref, adv, mask


def weights(loss_type, mask):
    """The per-token weight c_{i,t} each normalizer gives to a counted token."""
    m = mask.to(D)
    B = m.shape[0]
    if loss_type == "grpo":
        return m / (B * m.sum(1, keepdim=True))
    if loss_type in ("bnpo", "dapo"):
        return m / m.sum()
    return m / (B * L_MAX)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_value_and_gradient_weights(loss_type, level):
    lp, _, _, adv, mask = batch(seed=1)
    loss, stats = grpo_loss(lp, lp.detach(), adv, mask, loss_type=loss_type, importance_level=level,
                            max_completion_length=L_MAX)
    c = weights(loss_type, mask)
    expected = -(c * adv[:, None]).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    if loss_type == "grpo":  # -mean advantage
        torch.testing.assert_close(loss, -adv.mean(), rtol=1e-12, atol=1e-14)
    (g,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(g, -c * adv[:, None], rtol=1e-12, atol=1e-14)  # 0 on padding, not NaN
    assert stats["ratio_mean"].item() == 1 and stats["clip_frac"].item() == 0 and stats["approx_kl"].item() == 0


def test_grpo_token_level_equals_ppo_per_sequence_weights():
    # bnpo is PPO's token-mean surrogate: same loss and gradient off-policy too
    lp, old, _, adv, mask = batch(seed=2)
    ours, s1 = grpo_loss(lp, old, adv, mask, loss_type="bnpo")
    ppo, s2 = ppo_policy_loss(lp, old, adv, mask)
    torch.testing.assert_close(ours, ppo, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s1["clip_frac"], s2["clipfrac"])


def test_gspo_ratio_is_geometric_mean_and_gradient():
    lp, old, _, adv, mask = batch(seed=3)
    m = mask.to(D)
    n = m.sum(1)
    loss, stats = grpo_loss(lp, old, adv, mask, importance_level="sequence", clip_eps=0.999, clip_eps_high=1e6)
    # no clipping active: loss = -mean_i s_i A_i, s_i = prod_t (pi/pi_old)^(1/|o_i|)
    lr = torch.where(mask, lp - old, torch.zeros_like(m))
    s = torch.exp(lr.sum(1) / n)
    torch.testing.assert_close(loss, -(s * adv).mean(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(stats["ratio_mean"], s.mean().detach())
    # GSPO Eq. 10: grad = -(1/B) sum_i A_i s_i (1/|o_i|) sum_t grad log pi
    (g,) = torch.autograd.grad(loss, lp)
    expected = -(adv * s / n)[:, None] * m / m.shape[0]
    torch.testing.assert_close(g, expected.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "ratio,adv,eps_high,clipped",
    [
        (1.25, 1.0, None, True),  # above 1 + 0.2 with A > 0: no gradient
        (1.25, 1.0, 0.28, False),  # clip-higher: still pushed up until 1.28
        (1.30, 1.0, 0.28, True),
        (0.75, -1.0, 0.28, True),  # the low side keeps clip_eps = 0.2
        (0.75, 1.0, 0.28, False),
        (1.30, -1.0, None, False),
    ],
)
def test_clip_regions_with_clip_higher(ratio, adv, eps_high, clipped):
    lp = torch.log(torch.tensor([[ratio]], dtype=D)).requires_grad_(True)
    loss, stats = grpo_loss(lp, torch.zeros(1, 1, dtype=D), torch.tensor([adv], dtype=D), torch.ones(1, 1),
                            loss_type="dapo", clip_eps_high=eps_high)
    (g,) = torch.autograd.grad(loss, lp)
    if clipped:
        assert g.item() == 0.0 and stats["clip_frac"].item() == 1.0
        side = "clip_frac_high" if adv > 0 else "clip_frac_low"
        assert stats[side].item() == 1.0
    else:
        assert g.item() == pytest.approx(-adv * ratio) and stats["clip_frac"].item() == 0.0


@pytest.mark.parametrize("correction", [True, False])
def test_kl_term_on_policy_gradient(correction):
    lp, _, ref, _, mask = batch(seed=4)
    zero_adv = torch.zeros(lp.shape[0], dtype=D)
    beta = 0.3
    loss, stats = grpo_loss(lp, lp.detach(), zero_adv, mask, loss_type="bnpo", ref_logprobs=ref, beta=beta,
                            kl_ratio_correction=correction)
    m = mask.to(D)
    d = torch.where(mask, ref - lp.detach(), torch.zeros_like(m))
    k3 = torch.expm1(d) - d
    torch.testing.assert_close(loss, beta * k3.sum() / m.sum())  # ratio 1: value is beta * mean k3
    torch.testing.assert_close(stats["kl"], k3.sum() / m.sum())
    (g,) = torch.autograd.grad(loss, lp)
    if correction:  # k3 * ratio: the unbiased reverse-KL gradient, (log pi - log ref)
        per_tok = -d
    else:  # k3 alone: (1 - pi_ref / pi), biased
        per_tok = 1 - torch.exp(d)
    torch.testing.assert_close(g, beta * per_tok * m / m.sum(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_float64_gradcheck(loss_type, level):
    _, old, ref, adv, mask = batch(seed=5, B=3, T=4)
    g = torch.Generator().manual_seed(6)
    x = (old.nan_to_num(0.0) + 0.1 * torch.randn(old.shape, generator=g, dtype=D)).requires_grad_(True)

    def f(x):
        return grpo_loss(x, old, adv, mask, loss_type=loss_type, importance_level=level, ref_logprobs=ref,
                         beta=0.2, clip_eps_high=0.28, max_completion_length=5)[0]

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8)


def test_dapo_micro_batches_sum_to_full_batch_gradient():
    lp, old, ref, adv, mask = batch(seed=7)
    kw = dict(loss_type="dapo", beta=0.1, clip_eps_high=0.28)
    full, _ = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, **kw)
    (g_full,) = torch.autograd.grad(full, lp)
    n = float(mask.sum())
    parts = [
        grpo_loss(lp[s], old[s], adv[s], mask[s], ref_logprobs=ref[s], num_tokens=n, **kw)[0]
        for s in (slice(0, 2), slice(2, None))
    ]
    (g_parts,) = torch.autograd.grad(sum(parts), lp)
    torch.testing.assert_close(sum(parts), full)
    torch.testing.assert_close(g_parts, g_full)
    # without num_tokens dapo is bnpo on one batch
    kw["ref_logprobs"] = ref
    torch.testing.assert_close(
        grpo_loss(lp, old, adv, mask, **kw)[0], grpo_loss(lp, old, adv, mask, **{**kw, "loss_type": "bnpo"})[0]
    )


def test_per_token_advantages_and_empty_row():
    lp, old, _, adv, mask = batch(seed=8)
    a2 = adv[:, None].expand(lp.shape).clone()
    l1, _ = grpo_loss(lp, old, adv, mask)
    l2, _ = grpo_loss(lp, old, a2, mask)
    torch.testing.assert_close(l1, l2)
    # a row with no counted token contributes 0 and still counts in B (TRL's clamp(min=1))
    mask2 = mask.clone()
    mask2[1] = False
    l3, _ = grpo_loss(lp, old, adv, mask2)
    keep = torch.tensor([i != 1 for i in range(lp.shape[0])])
    l4, _ = grpo_loss(lp[keep], old[keep], adv[keep], mask[keep])
    torch.testing.assert_close(l3, l4 * (keep.sum() / len(keep)).to(D))


def _args():
    lp, old, ref, adv, mask = batch(seed=9, B=4, T=5)
    return lp.detach().nan_to_num(0.0), old.nan_to_num(0.0), adv, mask, ref.nan_to_num(0.0)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: {"old_logprobs": a["old_logprobs"][:, :3]}, "old_logprobs must have the shape"),
        (lambda a: {"old_logprobs": a["old_logprobs"].float()}, "dtype"),
        (lambda a: {"advantages": a["advantages"].float()}, "dtype"),
        (lambda a: {"advantages": a["advantages"][:3]}, "advantages must have shape"),
        (lambda a: {"mask": a["mask"][:, :3]}, "mask must have shape"),
        (lambda a: {"mask": a["mask"].long() * 2}, "0/1"),
        (lambda a: {"mask": torch.zeros_like(a["mask"])}, "no 1s"),
        (lambda a: {"logprobs": a["logprobs"][0]}, "2 dimension"),
        (lambda a: {"logprobs": a["logprobs"].long()}, "floating"),
        (lambda a: {"loss_type": "ppo"}, "loss_type must be one of"),
        (lambda a: {"importance_level": "seq"}, "importance_level must be one of"),
        (lambda a: {"loss_type": "dr_grpo"}, "needs max_completion_length"),
        (lambda a: {"loss_type": "dr_grpo", "max_completion_length": 2}, "bound every completion"),
        (lambda a: {"beta": 0.1}, "needs ref_logprobs"),
        (lambda a: {"beta": -0.1, "ref_logprobs": a["ref"]}, "beta must be >= 0"),
        (lambda a: {"clip_eps": 1.5}, "clip_eps must be in"),
        (lambda a: {"clip_eps_high": 0.0}, "clip_eps_high must be > 0"),
        (lambda a: {"num_tokens": 100}, "num_tokens is the 'dapo' normalizer"),
        (lambda a: {"loss_type": "dapo", "num_tokens": 1}, "must be >="),
        (lambda a: {"advantages": a["advantages"] * float("nan")}, "finite"),
        (lambda a: {"old_logprobs": a["old_logprobs"].masked_fill(a["mask"], float("nan"))}, "finite"),
        (lambda a: {"ref_logprobs": a["ref"].masked_fill(a["mask"], float("inf")), "beta": 0.1}, "finite"),
    ],
)
def test_bad_inputs(change, match):
    lp, old, adv, mask, ref = _args()
    a = {"logprobs": lp, "old_logprobs": old, "advantages": adv, "mask": mask, "ref": ref}
    a.update(change(a))
    kw = {k: v for k, v in a.items() if k not in ("logprobs", "old_logprobs", "advantages", "mask", "ref")}
    with pytest.raises(ValueError, match=match):
        grpo_loss(a["logprobs"], a["old_logprobs"], a["advantages"], a["mask"], **kw)


def test_nan_on_padding_is_ignored():
    lp, old, ref, adv, mask = batch(seed=10)
    loss, stats = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, beta=0.1)
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.isfinite(loss) and bool(torch.isfinite(g).all()) and bool((g[~mask] == 0).all())
    assert all(bool(torch.isfinite(v)) for v in stats.values())


# ---------------------------------------------------------------- DAPO's reward-side pieces


def test_frac_reward_zero_std_and_filter():
    r = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5 + 1e-12], dtype=D)
    assert frac_reward_zero_std(r, 4) == pytest.approx(0.75)  # the last group's std is 5e-13: "zero"
    keep = dynamic_sampling_filter(r, 4)
    assert keep.tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4  # exact equality
    # all-equal groups get advantage 0 (not NaN) in every scale: they carry no gradient
    for scale in ("group", "batch", "none"):
        a = group_advantages(r, 4, scale=scale)
        assert bool((a[:4] == 0).all() and (a[8:12] == 0).all())
    with pytest.raises(ValueError, match="multiple of group_size"):
        dynamic_sampling_filter(r[:6], 4)


def test_overlong_penalty():
    out = overlong_penalty([0, 10, 12, 14, 16, 17], max_completion_length=16, cache_length=4)
    assert out.tolist() == [0.0, 0.0, 0.0, -0.5, -1.0, -1.0]
    assert overlong_penalty(torch.tensor([16, 17]), 16, 0).tolist() == [0.0, -1.0]  # hard limit
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty([1], 4, 5)
    with pytest.raises(ValueError, match=">= 0"):
        overlong_penalty([-1], 4, 2)


# ---------------------------------------------------------------- the GRPO step of the benchmark


def test_bench_grpo_step_quick(capsys):
    from minirl import bench

    rows = bench.main(["--device", "cpu"], cases=[], grpo=bench.QUICK_GRPO)
    text = capsys.readouterr().out
    (r,) = [r for r in rows if r["what"] == "grpo step"]
    assert all(r[k] >= 0 for k in bench.GRPO_PARTS) and r["step"] >= r["update"] > 0
    assert r["completion_tokens"] > 0 and 0 <= r["reward"] <= 1
    assert "| minirl |" in text and "GRPO step: 2 prompts x G = 2" in text
