"""Pretraining and supervised fine-tuning (SFT) as one loop: next-token cross-entropy on the tokens
a mask selects, AdamW, linear warmup then linear decay, gradient clipping.

Derived in notebooks/03_tiny_lm.ipynb (its inline `train`, Eq. (2) for pretraining on every token
and Eq. (3) for SFT on the response tokens); this is the same loop in the house shape of
`minirl.algos` (a flat config, a state, a step, a loop), so that the lesson can check its inline
loop against it and later stages (rejection sampling + SFT, SFT on revisions) reuse it.

    SFTConfig                                  the hyperparameters (lesson 03's defaults)
    init_sft(model, cfg, n_steps) -> SFTState  AdamW + the warmup/decay schedule over n_steps
    sft_step(state, batch, cfg) -> row         one optimizer step (token-weighted accumulation over
                                               micro-batches when cfg.micro_batch_size is set)
    train_sft(state, batches, cfg, ...)        the loop: a row per step, JSONL log, checkpoints,
                                               stop after max_steps, resume_sft(state, path)

A batch is (input_ids, attention_mask, loss_mask), each (B, T) (lesson 03's tuples: for
pretraining the loss mask is the attention mask with column 0 cleared, for SFT the response mask),
or a dict with input_ids, attention_mask and loss_mask or response_mask (`encode_prompt_response`'s
output). The loss is `minirl.losses.sft_loss(lm.sequence_logprobs(model, ids, am), loss_mask)`:
the mean over the masked tokens ("token"), of the per-sequence means ("sequence") or of the
per-sequence sums ("sum").

Schedule: the learning rate at step s (0-based) of n is lr * min(1, (s + 1) / warmup) *
max(min_lr_ratio, 1 - s / n), lesson 03's LambdaLR.

Logged per step (row): step (0-based), loss, grad_norm (before clipping), lr (used by the step),
tokens (masked tokens of the batch). The row names follow `minirl.training.optimizer_step`.
Devices: tensors are moved to the model's device by `optimizer_step`; nothing here creates a
floating tensor of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..checks import check_int, check_tensor
from ..lm import sequence_logprobs
from ..losses import sft_loss
from ..training import (
    load_checkpoint,
    optimizer_step,
    run_loop,
    save_checkpoint,
    split_batch,
)

__all__ = ["SFTConfig", "SFTState", "check_config", "init_sft", "make_scheduler", "sft_step", "train_sft",
           "resume_sft", "as_batch"]

NORMALIZE = ("token", "sequence", "sum")


@dataclass
class SFTConfig:
    """Hyperparameters of pretraining / SFT. Defaults are lesson 03's pretraining run (its SFT run
    uses lr=2e-3, warmup=20)."""

    lr: float = 3e-3
    """peak AdamW learning rate"""
    warmup: int = 50
    """steps of linear warmup: the factor (s + 1) / warmup up to 1"""
    min_lr_ratio: float = 0.1
    """the linear decay 1 - s / n stops at this fraction of lr"""
    adam_beta1: float = 0.9
    """AdamW beta_1"""
    adam_beta2: float = 0.95
    """AdamW beta_2 (nanoGPT's 0.95)"""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default)"""
    max_grad_norm: float | None = 1.0
    """clip the global gradient norm (None: no clipping; the norm is still logged)"""
    normalize: str = "token"
    """`sft_loss` normalization: "token" (mean over every masked token of the batch),
    "sequence" (mean of the per-sequence means) or "sum" (mean over rows of each row's summed
    log-likelihood: minus the mean sequence log-prob that DPO's losses use)"""
    micro_batch_size: int | None = None
    """rows per micro-batch: gradients accumulate over micro-batches weighted by their masked
    tokens ("token") or rows ("sequence"), so a step's gradient is the full batch's; None: the
    whole batch in one pass"""


def check_config(cfg: SFTConfig) -> None:
    """Raise ValueError, naming the field, for a configuration that cannot run."""
    if not isinstance(cfg, SFTConfig):
        raise ValueError(f"cfg must be an SFTConfig, got {type(cfg).__name__}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    check_int(cfg.warmup, "warmup")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not cfg.weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {cfg.max_grad_norm}")
    if cfg.normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {cfg.normalize!r}")
    if cfg.micro_batch_size is not None:
        check_int(cfg.micro_batch_size, "micro_batch_size")


@dataclass
class SFTState:
    """What persists between steps: the model, AdamW, the schedule, the step count, the log."""

    model: object
    optimizer: object
    scheduler: object
    n_steps: int
    step: int = 0
    history: list = field(default_factory=list)


def make_scheduler(optimizer, cfg: SFTConfig, n_steps: int):
    """LambdaLR with factor min(1, (s + 1) / warmup) * max(min_lr_ratio, 1 - s / n_steps)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) * max(cfg.min_lr_ratio, 1 - s / n_steps))


def init_sft(model, cfg: SFTConfig, n_steps: int, optimizer=None) -> SFTState:
    """AdamW over the model's trainable parameters and the schedule over `n_steps` steps (the
    number of batches the run will take: the decay reaches its floor at the end).

    optimizer: an optimizer to use instead, one that lives longer than this run (rejection
    sampling's rounds keep one across rounds); it keeps its own learning rate (no schedule, and
    cfg's lr, betas and weight decay are not used). Plain Adam at a constant learning rate is
    SFTConfig(warmup=1, min_lr_ratio=1.0, adam_beta2=0.999, weight_decay=0.0): AdamW without
    weight decay takes bit for bit Adam's steps."""
    check_config(cfg)
    check_int(n_steps, "n_steps")
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        return SFTState(model, optimizer, None, n_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    return SFTState(model, opt, make_scheduler(opt, cfg, n_steps), n_steps)


def as_batch(batch) -> tuple:
    """(input_ids, attention_mask, loss_mask) from a 3-tuple or a dict holding input_ids,
    attention_mask and loss_mask (or response_mask); checked to be (B, T) each, B >= 1."""
    if isinstance(batch, dict):
        mask_key = "loss_mask" if "loss_mask" in batch else "response_mask"
        missing = [k for k in ("input_ids", "attention_mask", mask_key) if k not in batch]
        if missing:
            raise ValueError(f"a batch dict needs input_ids, attention_mask and loss_mask (or response_mask); "
                             f"missing {missing}")
        batch = (batch["input_ids"], batch["attention_mask"], batch[mask_key])
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise ValueError("a batch must be (input_ids, attention_mask, loss_mask) or a dict of them, got "
                         f"{type(batch).__name__}{'' if not hasattr(batch, '__len__') else f' of length {len(batch)}'}")
    ids, am, mask = batch
    check_tensor(ids, "input_ids", ndim=2)
    if ids.is_floating_point():
        raise ValueError(f"input_ids must hold token ids (an integer tensor), got dtype {ids.dtype}")
    if ids.shape[0] == 0:
        raise ValueError("a batch needs at least one row")
    for name, t in (("attention_mask", am), ("loss_mask", mask)):
        check_tensor(t, name, ndim=2)
        if t.shape != ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(ids.shape)}, got {tuple(t.shape)}")
    if not bool(mask.bool().any()):
        raise ValueError("loss_mask selects no token: nothing to train on")
    return ids, am, mask


def sft_step(state: SFTState, batch, cfg: SFTConfig) -> dict:
    """One optimizer step of `sft_loss` on `batch`; returns the row (also appended to
    state.history). With cfg.micro_batch_size the rows are split into micro-batches whose
    gradients accumulate, weighted by masked tokens ("token") or rows ("sequence")."""
    check_config(cfg)
    if state.step >= state.n_steps:
        raise ValueError(f"the state's schedule covers n_steps = {state.n_steps} steps, all done")
    ids, am, mask = as_batch(batch)

    def loss_fn(model, mb):
        return sft_loss(sequence_logprobs(model, mb[0], mb[1]), mb[2], normalize=cfg.normalize), {}

    if cfg.micro_batch_size is None or cfg.micro_batch_size >= ids.shape[0]:
        micro, weights = [(ids, am, mask)], None  # one pass: exactly lesson 03's backward
    else:
        micro = split_batch((ids, am, mask), cfg.micro_batch_size)
        weights = [float(mb[2].bool().sum()) if cfg.normalize == "token" else float(mb[0].shape[0])
                   for mb in micro]  # "sequence" and "sum" average over rows
    state.model.train()
    out = optimizer_step(state.model, state.optimizer, micro, loss_fn, weights=weights,
                         max_grad_norm=cfg.max_grad_norm, scheduler=state.scheduler)
    row = {"step": state.step, "loss": out["loss"], "grad_norm": out["grad_norm"], "lr": out["lr"],
           "tokens": int(mask.bool().sum())}
    state.step += 1
    state.history.append(row)
    return row


def train_sft(state: SFTState, batches, cfg: SFTConfig, *, log_path=None, checkpoint_path=None,
              checkpoint_every: int | None = None, max_steps: int | None = None,
              callback: Callable[[SFTState, dict], None] | None = None) -> list[dict]:
    """Steps state.step, state.step + 1, ... over `batches` (a list: batch i is step i's), up to
    state.n_steps steps in all (or max_steps, to stop early and resume later). Each row is appended
    to the JSONL `log_path` (a resumed state keeps the rows of its first state.step steps), then
    callback(state, row). With checkpoint_path, a checkpoint (model, AdamW, schedule, RNG states,
    step, history) is saved every checkpoint_every steps and after the last step of this call;
    `resume_sft` continues from it bit for bit. The model is left in eval mode. Returns
    state.history (every row since step 0)."""
    check_config(cfg)
    if isinstance(batches, (str, bytes, dict)) or not hasattr(batches, "__getitem__"):
        raise ValueError(f"batches must be a list of batches (one per step), got {type(batches).__name__}")
    if len(batches) < state.n_steps:
        raise ValueError(f"batches holds {len(batches)} batches but the schedule has n_steps = {state.n_steps}")
    if checkpoint_every is not None:
        check_int(checkpoint_every, "checkpoint_every")
    end = state.n_steps if max_steps is None else min(state.n_steps, max_steps)
    if max_steps is not None:
        check_int(max_steps, "max_steps", minimum=0)

    def save():
        save_checkpoint(checkpoint_path, state.model, state.optimizer, state.scheduler, step=state.step,
                        extra={"history": state.history, "n_steps": state.n_steps})

    def after(row):
        if checkpoint_path is not None and (state.step == end or
                                            (checkpoint_every is not None and state.step % checkpoint_every == 0)):
            save()
        if callback is not None:
            callback(state, row)

    run_loop(lambda i: sft_step(state, batches[state.step], cfg), max(0, end - state.step), log_path=log_path,
             resume_step=state.step, first_index=state.step, key="step", callback=after)
    state.model.eval()
    return state.history


def resume_sft(state: SFTState, path) -> SFTState:
    """Load a `train_sft` checkpoint into a freshly built state (`init_sft` with the same config
    and n_steps): weights, AdamW, schedule, RNG states, step and history. Returns the state."""
    info = load_checkpoint(path, state.model, state.optimizer, state.scheduler)
    extra = info["extra"] or {}
    if extra.get("n_steps") != state.n_steps:
        raise ValueError(f"the checkpoint was saved by a run of n_steps = {extra.get('n_steps')}, "
                         f"the state has n_steps = {state.n_steps}")
    state.step, state.history = info["step"], list(extra.get("history", []))
    return state
