"""minirl.losses (preference) against TRL 1.16.0 on identical tensors.

TRL no longer exposes standalone loss functions: the losses live inside trainer methods. Every
adapter that reaches into TRL's private methods is in this one module, pinned to TRL 1.16.0
(they move between releases; a version mismatch skips the module with a message instead of
failing obscurely).

  DPO   DPOTrainer._compute_loss(model, inputs, return_outputs): a trainer built on a tiny random
        GPT-2 and a word-level tokenizer (tests/conftest.py's `trl_tiny`, offline), with `precompute_ref_logps = True`
        so the reference log-probs come from `inputs`, and a stand-in "model" whose forward
        returns our per-token log-probs. TRL sums them over the sequence, so they are zero
        outside the completion. Chosen rows come first, rejected second.
  KTO   KTOTrainer._compute_loss(model, inputs, return_outputs) in the same way; the stand-in
        returns different per-token log-probs for the KL batch (`KL_input_ids`, a different
        width here) and the main batch.
  ORPO  ORPOTrainer.odds_ratio_loss(self, chosen, rejected) called unbound with a namespace
        holding `beta` and `accelerator.device`; the trainer's loss is nll - mean(returned).
  CPO / SimPO  CPOTrainer.cpo_loss(self, chosen, rejected) unbound in the same way; the
        trainer's loss is mean(returned) + cpo_alpha * nll.

Besides the losses, the gradients with respect to the per-token log-probs are compared: both
sides are differentiable functions of the same leaf tensor.
"""
import os
import warnings
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

trl = pytest.importorskip("trl")
if trl.__version__ != "1.16.0":
    pytest.skip(f"adapters written for trl 1.16.0 private methods, found {trl.__version__}", allow_module_level=True)

from datasets import Dataset  # noqa: E402

from minirl.losses import cpo_loss, dpo_loss, kto_loss, orpo_loss, simpo_loss  # noqa: E402

D = torch.float64
ATOL = 1e-6
B, T = 4, 7  # pairs per batch, sequence width (prompt + completion + padding)


# ---------------------------------------------------------------------------- a tiny local model


@pytest.fixture(scope="module")
def tiny(trl_tiny):
    """The shared tiny GPT-2 + 7-word tokenizer of tests/conftest.py (`trl_tiny`)."""
    return trl_tiny


def _trainer_args(config_cls, tiny, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' gradient_checkpointing rename
        return config_cls(output_dir=tiny.outdir, report_to="none", use_cpu=True, **kwargs)


def make_dpo_trainer(tiny, loss_type, beta):
    from trl import DPOConfig, DPOTrainer

    args = _trainer_args(DPOConfig, tiny, loss_type=[loss_type], beta=beta)
    ds = Dataset.from_dict({"prompt": ["a b", "c"], "chosen": [" good", " good"], "rejected": [" bad", " bad"]})
    trainer = DPOTrainer(model=tiny.model, ref_model=tiny.ref, args=args, train_dataset=ds, processing_class=tiny.tokenizer)
    trainer.precompute_ref_logps = True  # read ref_chosen_logps / ref_rejected_logps from inputs
    return trainer


def make_kto_trainer(tiny, beta, desirable_weight, undesirable_weight):
    from trl import KTOConfig, KTOTrainer

    args = _trainer_args(
        KTOConfig, tiny, beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
    )
    ds = Dataset.from_dict({"prompt": ["a b", "c"], "completion": [" good", " bad"], "label": [True, False]})
    trainer = KTOTrainer(model=tiny.model, ref_model=tiny.ref, args=args, train_dataset=ds, processing_class=tiny.tokenizer)
    trainer.precompute_ref_logps = True  # read ref_logps / ref_KL_logps from inputs
    return trainer


class StandIn:
    """What TRL's trainers call as `model(...)`: returns our per-token log-probs for the batch it
    is given (looked up by the width of `input_ids`), plus the fields TRL logs from."""

    def __init__(self, per_token_by_width):
        self.per_token_by_width = per_token_by_width

    def __call__(self, input_ids, labels=None, fused_lm_head=True, **kwargs):
        lp = self.per_token_by_width[input_ids.shape[1]]  # (N, width - 1)
        return SimpleNamespace(
            log_probs=lp,
            entropy=torch.zeros_like(lp).detach(),
            mean_logits=torch.zeros_like(lp).detach(),
            is_top1=torch.zeros(lp.shape, dtype=torch.bool),
        )


def completion_mask(n, width, seed):
    """(n, width) masks: a prompt of 1-2 tokens (never counted), then 1..width-2 completion tokens,
    then right padding. Column 0 is always prompt, so the shifted mask counts the same tokens."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(1, 3, (n, 1), generator=g)
    length = torch.randint(1, width - 2, (n, 1), generator=g)
    pos = torch.arange(width)[None, :]
    return ((pos >= start) & (pos < start + length)).long()


def per_token_logps(mask, seed, dtype=D):
    """(n, width - 1) random log-probs in [-4, 0), zero outside the (shifted) completion mask."""
    g = torch.Generator().manual_seed(seed)
    lp = -4 * torch.rand(mask.shape[0], mask.shape[1] - 1, generator=g, dtype=dtype)
    return (lp * mask[:, 1:]).requires_grad_(True)


# ---------------------------------------------------------------------------- DPO


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 0.7), ("hinge", 0.1), ("ipo", 0.1), ("ipo", 0.5)])
def test_dpo_matches_trl(tiny, loss_type, beta):
    trainer = make_dpo_trainer(tiny, loss_type, beta)
    mask = completion_mask(2 * B, T, seed=1)  # rows 0..B-1 chosen, B..2B-1 rejected
    lp = per_token_logps(mask, seed=2)
    g = torch.Generator().manual_seed(3)
    ref = -(torch.rand(2 * B, generator=g, dtype=D) * 4 * mask.sum(1))  # reference sequence log-probs
    inputs = {
        "input_ids": torch.zeros(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": ref[:B],
        "ref_rejected_logps": ref[B:],
    }
    trl_loss = trainer._compute_loss(StandIn({T: lp}), inputs, return_outputs=False)
    (trl_grad,) = torch.autograd.grad(trl_loss, lp)

    seq = lp.sum(1)  # (2B,) summed completion log-probs, as TRL sums them
    if loss_type == "ipo":
        # Convention difference: TRL's IPO divides each log-ratio by the completion length; our
        # dpo_loss takes the log-probs as given, so pass per-token averages (policy and ref alike).
        n = mask.sum(1).clamp(min=1).to(D)
        seq, ref = seq / n, ref / n
    ours, stats = dpo_loss(seq[:B], seq[B:], ref[:B], ref[B:], beta=beta, loss_type=loss_type)
    (our_grad,) = torch.autograd.grad(ours, lp)

    torch.testing.assert_close(ours, trl_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(our_grad, trl_grad, atol=ATOL, rtol=0)
    # the logged statistics agree too (TRL logs beta * summed log-ratios, also for IPO)
    if loss_type != "ipo":
        metrics = trainer._metrics["train"]
        assert stats["chosen_rewards"].mean().item() == pytest.approx(metrics["rewards/chosen"][-1], abs=ATOL)
        assert stats["reward_margin"].item() == pytest.approx(metrics["rewards/margins"][-1], abs=ATOL)
        assert stats["reward_accuracy"].item() == pytest.approx(metrics["rewards/accuracies"][-1], abs=ATOL)


# ---------------------------------------------------------------------------- KTO


@pytest.mark.parametrize(
    "labels,beta,lam_d,lam_u,kl_shift",
    [
        ([1, 0, 1, 1, 0, 0], 0.1, 1.0, 1.0, 0.0),
        ([1, 1, 0, 1, 0, 1], 0.5, 1.0, 1.33, 0.0),
        ([1, 0, 0, 1, 0, 1], 0.1, 1.0, 1.0, 50.0),  # reference above the policy: KL estimate < 0, clamped
        ([1, 1, 1, 1, 1, 1], 0.1, 1.0, 1.0, 0.0),  # one label kind only: handled, as TRL does
        ([0, 0, 0, 0, 0, 0], 0.3, 1.0, 2.0, 0.0),
    ],
)
def test_kto_matches_trl(tiny, labels, beta, lam_d, lam_u, kl_shift):
    trainer = make_kto_trainer(tiny, beta, lam_d, lam_u)
    n, t_kl = len(labels), T + 2  # the KL batch has another width so the stand-in can tell them apart
    mask, kl_mask = completion_mask(n, T, seed=4), completion_mask(n, t_kl, seed=5)
    lp, kl_lp = per_token_logps(mask, seed=6), per_token_logps(kl_mask, seed=7)
    g = torch.Generator().manual_seed(8)
    ref = -(torch.rand(n, generator=g, dtype=D) * 4 * mask.sum(1))
    ref_kl = -(torch.rand(n, generator=g, dtype=D) * 4 * kl_mask.sum(1)) + kl_shift
    inputs = {
        "input_ids": torch.zeros(n, T, dtype=torch.long),
        "attention_mask": torch.ones(n, T, dtype=torch.long),
        "completion_mask": mask,
        "KL_input_ids": torch.zeros(n, t_kl, dtype=torch.long),
        "KL_attention_mask": torch.ones(n, t_kl, dtype=torch.long),
        "KL_completion_mask": kl_mask,
        "label": torch.tensor(labels, dtype=torch.bool),
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    trl_loss = trainer._compute_loss(StandIn({T: lp, t_kl: kl_lp}), inputs, return_outputs=False)
    (trl_grad,) = torch.autograd.grad(trl_loss, lp)

    ours, stats = kto_loss(
        lp.sum(1), ref, torch.tensor(labels), kl_lp.sum(1), ref_kl,
        beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u,
    )
    (our_grad,) = torch.autograd.grad(ours, lp)
    torch.testing.assert_close(ours, trl_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(our_grad, trl_grad, atol=ATOL, rtol=0)
    assert stats["kl"].item() == pytest.approx(trainer._metrics["train"]["kl"][-1], abs=ATOL)
    if kl_shift > 0:
        assert stats["kl"].item() == 0.0


# ---------------------------------------------------------------------------- ORPO, CPO, SimPO


def _avg_logps(n, seed, low=-3.0):
    g = torch.Generator().manual_seed(seed)
    # averaged log-probs, some close to 0 (P near 1) to exercise both branches of log1mexp
    x = low * torch.rand(n, generator=g) ** 2
    return x.clamp(max=-1e-4).requires_grad_(True)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_matches_trl(lam):
    from trl.experimental.orpo import ORPOTrainer

    chosen, rejected = _avg_logps(16, seed=9), _avg_logps(16, seed=10)
    nll = torch.tensor(1.234)
    self_ = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, *_ = ORPOTrainer.odds_ratio_loss(self_, chosen, rejected)  # float32 inside (TRL casts)
    trl_loss = nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics: loss = policy_nll_loss - losses.mean()
    trl_grads = torch.autograd.grad(trl_loss, (chosen, rejected))
    ours, _ = orpo_loss(chosen, rejected, nll, lam=lam)
    our_grads = torch.autograd.grad(ours, (chosen, rejected))
    torch.testing.assert_close(ours, trl_loss, atol=ATOL, rtol=0)
    for a, b in zip(our_grads, trl_grads):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _cpo_self(loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5):
    return SimpleNamespace(
        alpha=0.0, beta=beta, loss_type=loss_type, simpo_gamma=simpo_gamma, label_smoothing=label_smoothing,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )


@pytest.mark.parametrize("beta,label_smoothing,cpo_alpha", [(0.1, 0.0, 1.0), (0.5, 0.2, 0.0)])
def test_cpo_matches_trl(beta, label_smoothing, cpo_alpha):
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(11)
    chosen = (-30 * torch.rand(16, generator=g, dtype=D)).requires_grad_(True)
    rejected = (-30 * torch.rand(16, generator=g, dtype=D)).requires_grad_(True)
    nll = torch.tensor(2.5, dtype=D)
    losses, _, _ = CPOTrainer.cpo_loss(_cpo_self("sigmoid", beta, label_smoothing), chosen, rejected)
    trl_loss = losses.mean() + cpo_alpha * nll  # CPOTrainer.get_batch_loss_metrics
    ours, _ = cpo_loss(chosen, rejected, nll, beta=beta, alpha=cpo_alpha, label_smoothing=label_smoothing)
    torch.testing.assert_close(ours, trl_loss, atol=ATOL, rtol=0)
    if label_smoothing > 0:
        # CPO's sigmoid is DPO's conservative (label-smoothed) sigmoid with a uniform reference:
        # this checks dpo_loss's label_smoothing, which TRL 1.16's DPOTrainer no longer has.
        zero = torch.zeros(16, dtype=D)
        ours_dpo, _ = dpo_loss(chosen, rejected, zero, zero, beta=beta, label_smoothing=label_smoothing)
        torch.testing.assert_close(ours_dpo, losses.mean(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("beta,gamma", [(2.0, 1.0), (2.5, 0.5)])
def test_simpo_matches_trl(beta, gamma):
    from trl.experimental.cpo import CPOTrainer

    chosen, rejected = _avg_logps(16, seed=12).double(), _avg_logps(16, seed=13).double()
    losses, _, _ = CPOTrainer.cpo_loss(_cpo_self("simpo", beta, simpo_gamma=gamma), chosen, rejected)
    # SimPO proper has no NLL term: in TRL that is CPOConfig(loss_type="simpo", cpo_alpha=0.0) (cpo_alpha
    # defaults to 1.0), whose loss is losses.mean(); TRL averages the log-probs for "simpo", as we expect.
    ours, _ = simpo_loss(chosen, rejected, beta=beta, gamma=gamma)
    torch.testing.assert_close(ours, losses.mean(), atol=ATOL, rtol=0)
