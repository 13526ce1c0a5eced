"""minirl's GRPO family (losses.grpo_loss, advantages.group_advantages / rloo_advantages) against
TRL 1.16.0's GRPOTrainer and RLOOTrainer on identical tensors, losses AND gradients to 1e-6.

Adapters (pinned to TRL 1.16.0 private methods; another version skips the module):
  GRPO loss   GRPOTrainer._compute_loss(model, inputs) on a real trainer (a tiny random GPT-2 saved
              to a temporary folder, so that beta > 0 can load its reference model offline), with
              a stand-in "model" whose forward returns our per-token log-probs, and
              old_per_token_logps / ref_per_token_logps / advantages / num_items_in_batch given in
              `inputs`. Every loss_type x importance_sampling_level x (beta = 0, beta > 0 with and
              without use_bias_correction_kl) x (epsilon_high None, 0.28) is one trainer built from
              a GRPOConfig, so the config -> attribute mapping is exercised too.
  GRPO adv.   GRPOTrainer._generate_and_score_completions(inputs) for scale_rewards group / batch /
              none: the tiny model generates, a reward function returns the rewards we chose (a
              dataset column), and the trainer's "advantages" are compared with group_advantages.
  RLOO        RLOOTrainer._generate_and_score_completions (advantages, with normalize_advantages
              off and on, beta 0 and > 0; the per-token log-probs of the policy and of the
              reference are replaced by ours through `_get_per_token_logps_and_entropies`), and
              RLOOTrainer._compute_loss with the stand-in model.

Conventions, TRL's and therefore ours (so where a paper or another library differs, it is here):
  * group std is the UNBIASED one (divide by G - 1; TRL's nanstd), and advantages are
    (r - mean_group) / (std + 1e-4), eps added to the std, not inside a sqrt. scale_rewards="batch"
    keeps the GROUP mean and divides by the std of all B*G rewards; "none" only centres (Dr. GRPO).
  * the KL term is k3 of (ref - logp), added per token as beta * k3 and, by default
    (use_bias_correction_kl=True = our kl_ratio_correction=True), MULTIPLIED BY THE IMPORTANCE
    RATIO (the sequence ratio under GSPO). It is averaged with the loss_type's own normalizer.
    TRL's logged "kl" is the mean of that product; our stats["kl"] is the plain k3 mean (so they
    are compared only without the correction).
  * epsilon_high (our clip_eps_high) applies to every loss_type; "dapo" does not imply it.
  * "dapo" divides by num_items_in_batch (the tokens of the whole generation batch; our
    num_tokens), "bnpo" by this batch's tokens, "dr_grpo" by B * max_completion_length, "grpo"
    averages per sequence first; a row without counted tokens contributes 0 (clamp(min=1)).
  * GSPO's sequence ratio is exp(masked mean of the token log-ratios), gradient through the mean;
    with loss_type other than "grpo" TRL (and we) broadcast it to the tokens and use the loss
    type's normalizer (TRL warns that GSPO proper is loss_type="grpo").
  * frac_reward_zero_std: isclose(group std, 0); TRL's metric tests the batch std under "batch".
  * RLOO (TRL): advantage = r_i - mean of the other G-1 rewards (= G/(G-1) (r_i - mean_group)),
    with beta > 0 the reward first loses beta * sum_t (old_logp - ref_logp) (k1, summed over the
    sequence: a reward penalty, unlike GRPO's k3 in the loss). normalize_advantages whitens over
    the batch with the unbiased std + 1e-4 (inline below; not a minirl function). The loss is PPO's
    clip on the SEQUENCE ratio exp(sum_t logp - sum_t old_logp), averaged over sequences: our
    grpo_loss on (B, 1) "tokens" holding the summed log-probs (and ppo_policy_loss on (B,) ones).
"""
import os
import warnings
import zlib
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(f"adapters written for trl 1.16.0 private methods, found {trl.__version__}", allow_module_level=True)

from datasets import Dataset  # noqa: E402

from minirl.advantages import frac_reward_zero_std, group_advantages, rloo_advantages  # noqa: E402
from minirl.losses import grpo_loss, ppo_policy_loss  # noqa: E402

D = torch.float64
ATOL = 1e-6
G = 4
B, TP, TC = 8, 2, 6  # completions (2 groups of G), prompt width, completion width
L_MAX = 8  # max_completion_length (>= TC)
PROMPTS = ["a b", "c"]


@pytest.fixture(scope="module")
def tiny(trl_tiny):
    """The shared tiny GPT-2 + 7-word tokenizer of tests/conftest.py (`trl_tiny`)."""
    return trl_tiny


def make_trainer(tiny, kind="grpo", **kwargs):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs.setdefault("per_device_train_batch_size", B)
        args = config_cls(
            output_dir=os.path.join(tiny.path, "out"), report_to="none", use_cpu=True, num_generations=G,
            max_completion_length=L_MAX, **kwargs,
        )
        ds = Dataset.from_dict({"prompt": PROMPTS, "r": [0.0, 1.0]})
        trainer = trainer_cls(
            model=tiny.path, reward_funcs=reward_from_column, args=args, train_dataset=ds,
            processing_class=tiny.tokenizer,
        )
    trainer.model.train()  # mode "train" in the loss, as during training
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def reward_from_column(completions, r, **kwargs):
    """The reward we chose for each sample, read from the batch's "r" column."""
    return list(r)


class StandIn:
    """What TRL calls as `model(input_ids, attention_mask, labels, fused_lm_head=True)`: returns our
    per-token log-probs for the completion (TRL keeps the last completion-width columns)."""

    def __init__(self, completion_logps):
        self.lp = completion_logps

    def __call__(self, input_ids, labels=None, fused_lm_head=True, **kwargs):
        lp = torch.cat([torch.zeros(self.lp.shape[0], input_ids.shape[1] - self.lp.shape[1], dtype=self.lp.dtype), self.lp], 1)
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp).detach())


def tensors(seed):
    """Completion mask (right padding, lengths 1..TC, one row full), log-probs that carry the
    gradient, old and reference log-probs ~0.5 away (so both clip sides are hit), advantages."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, TC + 1, (B,), generator=g)
    lengths[0] = TC
    mask = (torch.arange(TC)[None, :] < lengths[:, None]).long()
    lp = (-3 * torch.rand(B, TC, generator=g, dtype=D)).requires_grad_(True)
    old = lp.detach() + 0.5 * torch.randn(B, TC, generator=g, dtype=D)
    ref = lp.detach() + 0.3 * torch.randn(B, TC, generator=g, dtype=D)
    adv = torch.randn(B, generator=g, dtype=D).abs() * torch.tensor([1.0, -1.0] * (B // 2), dtype=D)  # both signs
    return lp, old, ref, adv, mask


def grpo_inputs(mask, old, ref, adv, num_items=None):
    inputs = {
        "prompt_ids": torch.ones(B, TP, dtype=torch.long),
        "prompt_mask": torch.ones(B, TP, dtype=torch.long),
        "completion_ids": torch.full((B, TC), 2, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum() if num_items is None else torch.tensor(num_items),
    }
    return inputs


# ---------------------------------------------------------------------------- GRPO loss


KL_CASES = {"beta0": (0.0, True), "kl_ratio": (0.04, True), "kl_plain": (0.04, False)}


@pytest.mark.parametrize("eps_high", [None, 0.28])
@pytest.mark.parametrize("kl", list(KL_CASES))
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_matches_trl(tiny, loss_type, level, kl, eps_high):
    beta, correction = KL_CASES[kl]
    trainer = make_trainer(
        tiny, loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon=0.2, epsilon_high=eps_high,
        use_bias_correction_kl=correction,
    )
    lp, old, ref, adv, mask = tensors(seed=zlib.crc32(repr((loss_type, level, kl, eps_high)).encode()) % 1000)
    trl_loss = trainer._compute_loss(StandIn(lp), grpo_inputs(mask, old, ref, adv))
    (trl_grad,) = torch.autograd.grad(trl_loss, lp)

    ours, stats = grpo_loss(
        lp, old, adv, mask, loss_type=loss_type, clip_eps=0.2, clip_eps_high=eps_high, importance_level=level,
        ref_logprobs=ref if beta > 0 else None, beta=beta, kl_ratio_correction=correction,
        max_completion_length=L_MAX,
    )
    (our_grad,) = torch.autograd.grad(ours, lp)
    torch.testing.assert_close(ours, trl_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(our_grad, trl_grad, atol=ATOL, rtol=0)
    assert our_grad.abs().max() > 1e-3  # a real gradient was compared

    metrics = trainer._metrics["train"]
    for ours_key, trl_key in [("clip_frac_low", "low_mean"), ("clip_frac_high", "high_mean"), ("clip_frac", "region_mean")]:
        assert stats[ours_key].item() == pytest.approx(metrics[f"clip_ratio/{trl_key}"][-1], abs=ATOL)
    if level == "token":  # both clip sides are exercised (at sequence level the ratios are closer to 1)
        assert stats["clip_frac_low"] > 0 and stats["clip_frac_high"] > 0
    if beta > 0 and not correction:
        assert stats["kl"].item() == pytest.approx(metrics["kl"][-1], abs=ATOL)


def test_dapo_normalizer_is_the_generation_batch_token_count(tiny):
    """TRL's "dapo" divides by num_items_in_batch (all micro-batches of a generation batch): our
    num_tokens. Two halves of a batch, each given the full count, sum to the full-batch loss."""
    trainer = make_trainer(tiny, loss_type="dapo", beta=0.04, epsilon_high=0.28)
    lp, old, ref, adv, mask = tensors(seed=11)
    total = int(mask.sum()) + 7  # as if another micro-batch held 7 more tokens
    trl_loss = trainer._compute_loss(StandIn(lp), grpo_inputs(mask, old, ref, adv, num_items=total))
    ours, _ = grpo_loss(lp, old, adv, mask, loss_type="dapo", clip_eps_high=0.28, ref_logprobs=ref, beta=0.04, num_tokens=total)
    torch.testing.assert_close(ours, trl_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, lp)[0], torch.autograd.grad(trl_loss, lp)[0], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------- GRPO advantages


# two groups with distinct rewards, one all-equal group, one with a tie
REWARDS = [0.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.25, 0.75, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
GEN_PROMPTS = ["a b", "c", "b c", "a"]


def generation_batch(rewards):
    """What the RepeatSampler hands the trainer: each prompt G times in a row, our reward beside it."""
    return [{"prompt": GEN_PROMPTS[i // G], "r": r} for i, r in enumerate(rewards)]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(tiny, float64_default, scale):
    trainer = make_trainer(tiny, scale_rewards=scale, per_device_train_batch_size=len(REWARDS))
    out = trainer._generate_and_score_completions(generation_batch(REWARDS))
    r = torch.tensor(REWARDS, dtype=D)
    torch.testing.assert_close(group_advantages(r, G, scale=scale), out["advantages"].to(D), atol=ATOL, rtol=0)
    if scale != "batch":
        assert frac_reward_zero_std(r, G) == pytest.approx(trainer._metrics["train"]["frac_reward_zero_std"][-1])
    assert frac_reward_zero_std(r, G) == 0.25


# ---------------------------------------------------------------------------- RLOO


def substitute_logps(trainer, seed):
    """Replace the policy's and the reference's per-token log-probs inside TRL's
    _generate_and_score_completions by float64 values of ours (the reference = policy + noise, so the
    KL penalty is not 0), and record them."""
    original = trainer._get_per_token_logps_and_entropies
    record = {}
    g = torch.Generator().manual_seed(seed)

    def fake(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        lp, ent, aux = original(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        lp = lp.detach().to(D)
        if model is trainer.ref_model:
            lp = lp + 0.5 * torch.randn(lp.shape, generator=g, dtype=D)
            record["ref"] = lp
        else:
            record["old"] = lp
        return lp, ent, aux

    trainer._get_per_token_logps_and_entropies = fake
    return record


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_rloo_advantages_match_trl(tiny, float64_default, beta, normalize):
    trainer = make_trainer(tiny, kind="rloo", beta=beta, normalize_advantages=normalize, per_device_train_batch_size=len(REWARDS))
    record = substitute_logps(trainer, seed=12)
    out = trainer._generate_and_score_completions(generation_batch(REWARDS))
    r = torch.tensor(REWARDS, dtype=D)
    m = out["completion_mask"].to(D)
    if beta > 0:  # TRL's RLOO: k1 summed over the completion, subtracted from the reward
        r = r - beta * ((record["old"] - record["ref"]) * m).sum(1)
    ours = rloo_advantages(r, G)
    if normalize:
        ours = (ours - ours.mean()) / (ours.std() + 1e-4)
    torch.testing.assert_close(ours, out["advantages"].to(D), atol=ATOL, rtol=0)
    torch.testing.assert_close(out["old_logps"].to(D), (record["old"] * m).sum(1), atol=ATOL, rtol=0)
    # the leave-one-out identity: r_i - mean(others) = G/(G-1) (r_i - mean_group)
    if not normalize:
        torch.testing.assert_close(ours, G / (G - 1) * group_advantages(r, G, scale="none"), atol=1e-12, rtol=0)


@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_rloo_loss_matches_trl(tiny, eps_high):
    trainer = make_trainer(tiny, kind="rloo", beta=0.0, epsilon=0.2, epsilon_high=eps_high)
    lp, _, _, adv, mask = tensors(seed=13)
    m = mask.to(D)
    # RLOO's ratio is on the summed log-probs: old ones chosen so the ratios straddle both clip sides
    old_seq = (lp.detach() * m).sum(1) - 0.5 * torch.linspace(-1, 1, B, dtype=D)
    inputs = {
        "prompt_ids": torch.ones(B, TP, dtype=torch.long), "prompt_mask": torch.ones(B, TP, dtype=torch.long),
        "completion_ids": torch.full((B, TC), 2, dtype=torch.long), "completion_mask": mask,
        "old_logps": old_seq, "advantages": adv,
    }
    trl_loss = trainer._compute_loss(StandIn(lp), inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, lp)

    seq = (lp * m).sum(1)
    ours, stats = grpo_loss(seq[:, None], old_seq[:, None], adv, torch.ones(B, 1), clip_eps=0.2, clip_eps_high=eps_high)
    (our_grad,) = torch.autograd.grad(ours, lp)
    torch.testing.assert_close(ours, trl_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(our_grad, trl_grad, atol=ATOL, rtol=0)
    assert stats["clip_frac"] > 0 and stats["clip_frac"] < 1
    metrics = trainer._metrics["train"]
    assert stats["clip_frac"].item() == pytest.approx(metrics["clip_ratio/region_mean"][-1], abs=ATOL)
    if eps_high is None:  # and PPO's own loss on (B,) sequence log-probs is the same thing
        ppo, _ = ppo_policy_loss((lp * m).sum(1), old_seq, adv, clip_eps=0.2)
        torch.testing.assert_close(ppo, trl_loss, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------- the benchmark script


def test_bench_trl_grpo_quick_runs(capsys):
    from minirl import bench_trl_grpo

    res = bench_trl_grpo.main(["--quick", "--device", "cpu"])
    text = capsys.readouterr().out
    assert res["ratio"] > 0 and "TRL step / minirl step" in text and "| TRL 1.16.0 GRPOTrainer |" in text
    trl_row = res["TRL 1.16.0 GRPOTrainer"]
    assert trl_row["generation"] > 0 and trl_row["reference"] > 0 and trl_row["completion_tokens"] > 0
