"""The DPO family as one loop with the loss as a parameter, and the rounds of online DPO and SPIN.

Derived in notebooks/10 (DPO), notebooks/11 (the family: its inline `train_family` and
`family_loss`, KTO with its reference point) and notebooks/12 (online DPO, SPIN); this is the
same code in the house shape of `minirl.algos` (a flat config, a state, a step, a loop), so that
each lesson can check its inline loop against it. `minirl.dpo.train_dpo` is this loop with
loss="dpo", epochs of shuffled pairs and reference log-probs computed once.

    PreferenceConfig                         loss, its hyperparameters, the batch schedule
    init_preference(policy, ref, tok, rows, cfg) -> PreferenceState
    preference_step(state, cfg) -> row       one AdamW step on the next minibatch of the schedule
    train_preference(state, cfg, ...)        the loop: JSONL log, checkpoints, stop and resume
    resume_preference(state, path)
    family_loss(loss, pol, ref, cfg)         the loss of every method on sequence scores
    sample_complete(policy, tok, prompts, k, ...)   k samples per prompt, truncated ones dropped
    online_dpo_round(policy, ref, tok, prompts, scorer, dpo_cfg, ...)   sample -> label -> DPO
    spin_round(policy, tok, data_rows, dpo_cfg, ...)                     SPIN (Chen et al. 2024)

Scores (one `Scores` per side): for the (2b, T) minibatch of `minirl.dpo.encode_preferences`
(chosen rows, then rejected rows) one teacher-forced forward gives the summed log-probs
log pi(y|x) of the chosen and rejected responses (b,) each and their per-token averages
(SimPO, ORPO, RRHF), `lm.sequence_sum` / `lm.sequence_mean` over the response tokens (EOS
included). The reference's scores come from the same minibatch without gradient ("per_batch",
lesson 11), or from one pass over all rows before training ("precompute", TRL's
precompute_ref_logps and `train_dpo`).

The losses (cfg.loss), each a function of minirl.losses on those scores:
    dpo     dpo_loss(sums; beta, label_smoothing, dpo_loss_type sigmoid/hinge/ipo)   Eq. (1)
    ipo     ipo_loss(sums; tau = beta)                                              Eq. (2)
    kto     kto_loss(chosen desirable, rejected undesirable; beta), z_ref = 0, or with
            kto_kl=True estimated on mismatched pairs (each prompt with the previous pair's
            responses, lesson 11)                                                    Eq. (3)
    orpo    orpo_loss(averages; lam = orpo_lam)                                     Eq. (4)
    simpo   simpo_loss(averages; beta = simpo_beta, gamma = simpo_gamma)            Eq. (5)
    cpo     cpo_loss(sums; beta, alpha = cpo_alpha)                                 Eq. (6)
    rrhf    rrhf_loss(averages ranked chosen > rejected, SFT on the summed chosen)  Eq. (7)
    sft     -mean summed log pi(y_w | x): SFT on the chosen responses (the baseline)
A custom `loss_fn(pol, ref, cfg) -> (loss, stats or None)` may replace them.

Logged per step (row): step (0-based), epoch, loss, grad_norm, and for every loss the DPO
statistics at cfg.beta (TRL's names, as `minirl.dpo.dpo_step`): chosen_logps, rejected_logps
(means of the summed log-probs), chosen_rewards, rejected_rewards (means of beta log pi/pi_ref),
margin, accuracy, grad_weight (mean sigma(r_l - r_w)); plus the loss's own scalar statistics.

Batch schedule: "replacement" draws cfg.steps minibatches of batch_size rows with replacement
(lesson 11's plan), "epochs" shuffles the rows cfg.epochs times (train_dpo); both from a CPU
generator seeded with cfg.seed, fixed at init (so a resumed run sees the same minibatches on any
device). Sampling (online DPO, SPIN) uses a generator on the model's device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from ..checks import check_int, check_prompts, check_rows
from ..lm import masked_sequence_logprobs, sequence_logprobs, sequence_mean, sequence_sum
from ..losses import cpo_loss, dpo_loss, ipo_loss, kto_loss, orpo_loss, rrhf_loss, simpo_loss
from ..losses.preference import DPO_LOSS_TYPES
from ..rollout import make_generator, make_reference
from ..training import load_checkpoint, model_device, optimizer_step, run_loop, save_checkpoint

__all__ = [
    "LOSSES",
    "PreferenceConfig",
    "PreferenceState",
    "Scores",
    "check_config",
    "family_loss",
    "init_preference",
    "preference_step",
    "train_preference",
    "resume_preference",
    "sample_complete",
    "online_dpo_round",
    "spin_round",
]

LOSSES = ("dpo", "ipo", "kto", "orpo", "simpo", "cpo", "rrhf", "sft")
SAMPLING = ("replacement", "epochs")
REFERENCE = ("per_batch", "precompute")
LENGTH_GROUP_MULT = 50  # group_by_length: pairs per mega-batch = 50 * batch_size (HF's mega_batch_mult)
PAIR_KEYS = ("prompt", "chosen", "rejected")
DPO_STEP_KEYS = ("loss", "chosen_logps", "rejected_logps", "chosen_rewards", "rejected_rewards", "margin",
                 "accuracy", "grad_weight")


@dataclass
class PreferenceConfig:
    """Hyperparameters of the DPO-family loop. Defaults are lesson 11's budget and losses."""

    loss: str = "dpo"
    """one of LOSSES (see the module docstring)"""
    beta: float = 0.1
    """DPO / KTO / CPO beta, IPO's tau; also the beta of the logged implicit rewards"""
    dpo_loss_type: str = "sigmoid"
    """loss="dpo": "sigmoid" (DPO), "hinge" (SLiC) or "ipo" (as minirl.losses.dpo_loss)"""
    label_smoothing: float = 0.0
    """loss="dpo" with "sigmoid": conservative DPO's assumed fraction of flipped labels"""
    kto_kl: bool = False
    """loss="kto": estimate the reference point z_ref on mismatched pairs (else z_ref = 0)"""
    orpo_lam: float = 0.1
    """ORPO's weight lambda of the odds-ratio term"""
    simpo_beta: float = 2.0
    """SimPO's reward scale beta"""
    simpo_gamma: float = 1.0
    """SimPO's target margin gamma"""
    cpo_alpha: float = 1.0
    """CPO's weight alpha of the NLL term"""
    lr: float = 2e-4
    """AdamW learning rate"""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default, lesson 11; train_dpo's default is 0)"""
    max_grad_norm: float | None = 1.0
    """clip the global gradient norm (None: no clipping; the norm is still logged)"""
    batch_size: int = 16
    """pairs per optimizer step (the forward pass sees 2 * batch_size sequences)"""
    sampling: str = "replacement"
    """"replacement": `steps` minibatches drawn with replacement; "epochs": `epochs` passes over
    the rows in shuffled minibatches (the last one of a pass may be smaller)"""
    steps: int = 10
    """optimizer steps with sampling="replacement" """
    epochs: int = 1
    """passes with sampling="epochs" """
    reference: str = "per_batch"
    """"per_batch": the reference scores each minibatch (lesson 11); "precompute": every row
    once before training, in chunks of 512 rows (train_dpo)"""
    max_len: int = 96
    """token budget per prompt + response (longer responses lose their end)"""
    seed: int = 0
    """seed of the batch schedule"""
    # Speed options (issue 9). Off by default: the defaults reproduce the lessons' numbers bit for
    # bit. Each changes only how the same sums are computed (float rounding) or the order in which
    # the rows are visited, never the loss.
    group_by_length: bool = False
    """sampling="epochs" only: length-grouped minibatches (the `group_by_length` of HF's Trainer):
    each pass shuffles the pairs, sorts each mega-batch of LENGTH_GROUP_MULT * batch_size pairs
    by length (longest first), cuts it into minibatches and shuffles their order, so that a
    minibatch holds pairs of similar length and its padding shrinks. Every pair is still seen
    exactly once per pass; only which pairs share a step changes"""
    reference_batch: int | None = None
    """reference="precompute" only: score the rows (sequences, chosen and rejected alike) sorted
    by length, this many per forward pass, each chunk cut to its own longest row (None: chunks
    of 512 rows in data order, the default). 2 * batch_size matches the training forward"""
    response_only_head: bool = False
    """apply the LM head to the response positions only (`minirl.lm.masked_sequence_logprobs`),
    for the policy and the reference: the prompt's and the padding's logits are never computed"""


def check_config(cfg: PreferenceConfig) -> None:
    """Raise ValueError, naming the field, for a configuration that cannot run."""
    if not isinstance(cfg, PreferenceConfig):
        raise ValueError(f"cfg must be a PreferenceConfig, got {type(cfg).__name__}")
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    if cfg.dpo_loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo_loss_type must be one of {DPO_LOSS_TYPES}, got {cfg.dpo_loss_type!r}")
    for name in ("beta", "lr", "simpo_beta", "orpo_lam"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")
    if not cfg.weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {cfg.max_grad_norm}")
    for name in ("batch_size", "steps", "epochs", "max_len"):
        check_int(getattr(cfg, name), name)
    if cfg.sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {cfg.sampling!r}")
    if cfg.reference not in REFERENCE:
        raise ValueError(f"reference must be one of {REFERENCE}, got {cfg.reference!r}")
    if cfg.kto_kl and cfg.loss != "kto":
        raise ValueError(f"kto_kl applies to loss='kto' only, got loss={cfg.loss!r}")
    for name in ("group_by_length", "response_only_head"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(cfg, name)!r}")
    if cfg.group_by_length and cfg.sampling != "epochs":
        raise ValueError(f"group_by_length needs sampling='epochs' (passes over the rows), got {cfg.sampling!r}")
    if cfg.reference_batch is not None:
        check_int(cfg.reference_batch, "reference_batch")
        if cfg.reference != "precompute":
            raise ValueError(f"reference_batch applies to reference='precompute' only, got {cfg.reference!r}")


class Scores(NamedTuple):
    """Sequence scores of b pairs, (b,) each: summed and per-token averaged log-probs."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_avg: torch.Tensor
    rejected_avg: torch.Tensor


def family_loss(loss: str, pol: Scores, ref: Scores, cfg: PreferenceConfig, kl_logps=None):
    """(loss, stats or None) of method `loss` on the policy's and the reference's scores.
    kl_logps: (policy, reference) (2b,) log-probs of mismatched pairs, for KTO's z_ref."""
    sw, sl, mw, ml = pol
    rw, rl = ref.chosen, ref.rejected
    one, zero = torch.ones_like(mw), torch.zeros_like(mw)
    if loss == "dpo":
        return dpo_loss(sw, sl, rw, rl, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                        loss_type=cfg.dpo_loss_type)
    if loss == "ipo":
        return ipo_loss(sw, sl, rw, rl, tau=cfg.beta)
    if loss == "kto":
        kl = (None, None) if kl_logps is None else kl_logps
        return kto_loss(torch.cat([sw, sl]), torch.cat([rw, rl]), torch.cat([one, zero]).bool(), kl[0], kl[1],
                        beta=cfg.beta)
    if loss == "orpo":
        return orpo_loss(mw, ml, lam=cfg.orpo_lam)
    if loss == "simpo":
        return simpo_loss(mw, ml, beta=cfg.simpo_beta, gamma=cfg.simpo_gamma)
    if loss == "cpo":
        return cpo_loss(sw, sl, beta=cfg.beta, alpha=cfg.cpo_alpha)
    if loss == "rrhf":
        return rrhf_loss(torch.stack([mw, ml], 1), torch.stack([one, zero], 1), sft_logps=torch.stack([sw, sl], 1))
    if loss == "sft":
        return -sw.mean(), None
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


# ------------------------------------------------------------------------------ state


@dataclass
class PreferenceState:
    """What persists between steps: the models, the encoded rows, the reference scores (when
    precomputed), the schedule of minibatches, AdamW, the step count, the log, the last scores."""

    policy: object
    ref_model: object
    tokenizer: object
    rows: list
    optimizer: object
    batch: dict
    lengths: torch.Tensor
    schedule: list
    ref_logps: torch.Tensor | None = None
    step: int = 0
    history: list = field(default_factory=list)
    last: tuple | None = None
    """(policy Scores detached, reference Scores) of the last step, before its update"""


def _length_grouped(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, g: torch.Generator) -> list:
    """Minibatches of one pass with group_by_length: `order` (a shuffle of the row indices) is cut
    into mega-batches of LENGTH_GROUP_MULT * batch_size rows, each sorted by `lengths` (longest
    first, ties in shuffled order) and cut into minibatches of batch_size (the last of a
    mega-batch may be smaller); the minibatches are then shuffled with `g`."""
    mega = LENGTH_GROUP_MULT * batch_size
    batches = []
    for s in range(0, len(order), mega):
        chunk = order[s:s + mega]
        chunk = chunk[torch.sort(lengths[chunk], descending=True, stable=True).indices]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def _schedule(n_rows: int, cfg: PreferenceConfig, pair_lengths: torch.Tensor | None = None) -> list:
    g = torch.Generator().manual_seed(cfg.seed)  # CPU on purpose: the same minibatches on any device
    if cfg.sampling == "replacement":
        return [(0, torch.randint(n_rows, (cfg.batch_size,), generator=g)) for _ in range(cfg.steps)]
    out = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(n_rows, generator=g)
        if cfg.group_by_length:
            out += [(epoch, idx) for idx in _length_grouped(order, pair_lengths, cfg.batch_size, g)]
        else:
            out += [(epoch, order[s:s + cfg.batch_size]) for s in range(0, n_rows, cfg.batch_size)]
    return out


def init_preference(policy, ref_model, tokenizer, rows, cfg: PreferenceConfig) -> PreferenceState:
    """Check the config and the rows ({"prompt", "chosen", "rejected"} dicts, a datasets.Dataset
    works too), encode all rows once, fix the schedule, build AdamW over the policy's trainable
    parameters, and with reference="precompute" score every row under `ref_model`."""
    from ..dpo import _all_logps, encode_preferences  # minirl.dpo delegates train_dpo to this module

    check_config(cfg)
    rows = check_rows(rows, PAIR_KEYS, "preference rows")
    batch = encode_preferences(tokenizer, rows, cfg.max_len)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    ref = None
    if cfg.reference == "precompute":
        on_ref = {k: v.to(model_device(ref_model)) for k, v in batch.items()}
        # (2B,); the default: chunks of 512 rows in data order
        ref = _all_logps(ref_model, on_ref, chunk=cfg.reference_batch or 512,
                         by_length=cfg.reference_batch is not None, response_only=cfg.response_only_head)
    lengths = batch["response_mask"].sum(-1)  # (2B,) response tokens, EOS included
    pair_lengths = None
    if cfg.group_by_length:  # a pair's minibatch width is the longer of its two sequences
        full, n = batch["attention_mask"].sum(-1), len(rows)
        pair_lengths = torch.maximum(full[:n], full[n:])  # (B,)
    return PreferenceState(policy, ref_model, tokenizer, rows, opt, batch, lengths,
                           _schedule(len(rows), cfg, pair_lengths), ref)


def _mismatched(rows):
    """KTO's KL pairs: each prompt with the two responses of the previous pair of the minibatch."""
    return [{"prompt": r["prompt"], "chosen": q["chosen"], "rejected": q["rejected"]}
            for r, q in zip(rows, rows[-1:] + rows[:-1])]


def _scores(model, mb, response_only: bool = False) -> Scores:
    if response_only:  # the LM head on the response positions only; 0 elsewhere (the sums below mask them)
        lp = masked_sequence_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"])
    else:
        lp = sequence_logprobs(model, mb["input_ids"], mb["attention_mask"])  # (2b, T) per token
    n = mb["input_ids"].shape[0] // 2
    s, m = sequence_sum(lp, mb["response_mask"]), sequence_mean(lp, mb["response_mask"])  # (2b,) each
    return Scores(s[:n], s[n:], m[:n], m[n:])


def preference_step(state: PreferenceState, cfg: PreferenceConfig, loss_fn: Callable | None = None) -> dict:
    """One AdamW step on the schedule's minibatch number state.step; returns the row (also
    appended to state.history). loss_fn(pol, ref, cfg) -> (loss, stats or None) replaces
    cfg.loss."""
    from ..dpo import _select, encode_preferences

    check_config(cfg)
    if state.step >= len(state.schedule):
        raise ValueError(f"the schedule holds {len(state.schedule)} steps, all done")
    epoch, idx = state.schedule[state.step]
    B = len(state.rows)
    mb = _select(state.batch, torch.cat([idx, idx + B]))  # chosen rows, then their rejected rows
    device = model_device(state.policy)
    fixed = {}
    if state.ref_logps is None:
        with torch.no_grad():
            ref = _scores(state.ref_model, {k: v.to(model_device(state.ref_model)) for k, v in mb.items()},
                          cfg.response_only_head)
    else:
        rs, n = state.ref_logps, state.lengths.to(state.ref_logps.device)
        ref = Scores(rs[idx], rs[idx + B], rs[idx] / n[idx], rs[idx + B] / n[idx + B])
    ref = Scores(*(t.to(device) for t in ref))
    if cfg.kto_kl:
        kl_batch = encode_preferences(state.tokenizer, _mismatched([state.rows[i] for i in idx.tolist()]),
                                      cfg.max_len)
        with torch.no_grad():
            kl_ref = _scores(state.ref_model, {k: v.to(model_device(state.ref_model)) for k, v in kl_batch.items()},
                             cfg.response_only_head)
            fixed["kl_ref"] = torch.cat(kl_ref[:2]).to(device)
        fixed["kl_batch"] = kl_batch
    seen = {}

    def compute(model, micro):
        pol = _scores(model, micro["mb"], cfg.response_only_head)
        kl = None
        if cfg.kto_kl:
            with torch.no_grad():
                kl = (torch.cat(_scores(model, micro["kl_batch"], cfg.response_only_head)[:2]), micro["kl_ref"])
        fn = loss_fn if loss_fn is not None else (lambda p, r, c: family_loss(c.loss, p, r, c, kl))
        loss, stats = fn(pol, micro["ref"], cfg)
        seen["pol"], seen["stats"] = Scores(*(t.detach() for t in pol)), stats
        out = {}
        for k, v in (stats or {}).items():
            if isinstance(v, torch.Tensor) and v.ndim == 0:
                out[k] = float(v)
        return loss, out

    state.policy.train()
    out = optimizer_step(state.policy, state.optimizer, [{"mb": mb, "ref": ref, **fixed}], compute,
                         max_grad_norm=cfg.max_grad_norm)
    pol, stats = seen["pol"], seen["stats"] or {}
    state.last = (pol, ref)
    if cfg.loss == "dpo" and loss_fn is None:  # dpo_loss's own statistics, exactly as dpo.dpo_step logs them
        cr, rr, acc, margin = (stats["chosen_rewards"], stats["rejected_rewards"], stats["reward_accuracy"],
                               stats["reward_margin"])
    else:
        cr, rr = cfg.beta * (pol.chosen - ref.chosen), cfg.beta * (pol.rejected - ref.rejected)
        acc, margin = (cr > rr).to(cr.dtype).mean(), (cr - rr).mean()
    row = {"step": state.step, "epoch": epoch, "loss": out["loss"], "grad_norm": out["grad_norm"],
           "chosen_logps": float(pol.chosen.mean()), "rejected_logps": float(pol.rejected.mean()),
           "chosen_rewards": float(cr.mean()), "rejected_rewards": float(rr.mean()), "margin": float(margin),
           "accuracy": float(acc), "grad_weight": float(torch.sigmoid(rr - cr).mean())}
    row.update({k: v for k, v in out.items() if k not in row and k not in ("lr", "reward_accuracy", "reward_margin")})
    state.step += 1
    state.history.append(row)
    return row


def train_preference(state: PreferenceState, cfg: PreferenceConfig, *, loss_fn: Callable | None = None,
                     log_path=None, checkpoint_path=None, checkpoint_every: int | None = None,
                     max_steps: int | None = None,
                     callback: Callable[[PreferenceState, dict], None] | None = None) -> list[dict]:
    """The steps of the schedule from state.step on (up to max_steps steps in all, to stop early
    and resume later). Each row is appended to the JSONL `log_path` (a resumed state keeps the
    rows of its first state.step steps), then callback(state, row) (it may evaluate; the policy is
    put back in training mode by the next step). With checkpoint_path, a checkpoint (policy,
    AdamW, RNG states, step, history) is saved every checkpoint_every steps and after the last
    step of this call. The policy is left in eval mode. Returns state.history."""
    check_config(cfg)
    end = len(state.schedule) if max_steps is None else min(len(state.schedule), max_steps)
    if max_steps is not None:
        check_int(max_steps, "max_steps", minimum=0)
    if checkpoint_every is not None:
        check_int(checkpoint_every, "checkpoint_every")

    def after(row):
        if checkpoint_path is not None and (state.step == end or
                                            (checkpoint_every is not None and state.step % checkpoint_every == 0)):
            save_checkpoint(checkpoint_path, state.policy, state.optimizer, step=state.step,
                            extra={"history": state.history, "n_steps": len(state.schedule)})
        if callback is not None:
            callback(state, row)

    run_loop(lambda i: preference_step(state, cfg, loss_fn), max(0, end - state.step), log_path=log_path,
             resume_step=state.step, first_index=state.step, key="step", callback=after)
    state.policy.eval()
    return state.history


def resume_preference(state: PreferenceState, path) -> PreferenceState:
    """Load a `train_preference` checkpoint into a freshly built state (`init_preference` with the
    same config and rows): weights, AdamW, RNG states, step and history."""
    info = load_checkpoint(path, state.policy, state.optimizer)
    extra = info["extra"] or {}
    if extra.get("n_steps") != len(state.schedule):
        raise ValueError(f"the checkpoint was saved by a run of {extra.get('n_steps')} steps, "
                         f"the state's schedule holds {len(state.schedule)}")
    state.step, state.history = info["step"], list(extra.get("history", []))
    return state


# ------------------------------------------------------------------------------ online rounds


def sample_complete(policy, tokenizer, prompts, k: int, max_new_tokens: int, seed: int,
                    temperature: float = 1.0) -> tuple[list, float]:
    """k samples per prompt from `policy` (a generator on its device seeded with `seed`); the ones
    that hit max_new_tokens without EOS are dropped (they would get an EOS they never sampled).
    Returns (N lists of the complete responses, the fraction truncated)."""
    from ..reward_model import sample_responses

    check_prompts(prompts)
    texts, cut = sample_responses(policy, tokenizer, prompts, k, max_new_tokens=max_new_tokens,
                                  temperature=temperature, return_truncated=True,
                                  generator=make_generator(seed, model_device(policy)))
    kept = [[y for y, c in zip(ys, cs) if not c] for ys, cs in zip(texts, cut)]
    return kept, sum(map(sum, cut)) / (len(prompts) * k)


def online_dpo_round(policy, ref_model, tokenizer, prompts, scorer: Callable, dpo_cfg, *, k: int,
                     max_new_tokens: int, seed: int, sampler=None, measure: Callable | None = None,
                     score_key: str = "rm") -> dict:
    """One round of online (iterative) DPO (lesson 12, Eq. (1)-(2)): sample k responses per prompt
    from `sampler` (default: the current policy), drop the truncated ones, label them by
    rank-and-pair with `scorer(prompts, responses) -> scores` (`minirl.labeling.label_pairs`, the
    keys "<score_key>_chosen/_rejected" and, with `measure`, "gold_chosen/_rejected"), then
    `minirl.dpo.train_dpo(policy, ref_model, ..., dpo_cfg)` on the pairs (in place).
    Returns {"rows", "truncated" (fraction), "history" (train_dpo's, [] when no pair was made)}."""
    from ..dpo import train_dpo
    from ..labeling import label_pairs

    check_int(k, "k", minimum=2)
    kept, rate = sample_complete(policy if sampler is None else sampler, tokenizer, prompts, k, max_new_tokens, seed)
    rows = label_pairs(prompts, kept, scorer, score_key=score_key, measure=measure)
    history = train_dpo(policy, ref_model, tokenizer, rows, dpo_cfg) if rows else []
    return {"rows": rows, "truncated": rate, "history": history}


def spin_round(policy, tokenizer, data_rows, dpo_cfg, *, max_new_tokens: int, seed: int) -> dict:
    """One SPIN iteration (Chen et al. 2024, lesson 12, Eq. (3)): the current weights, frozen,
    are both the sampler and the reference pi_{theta_t}; each data row {"prompt", "response"}
    becomes the pair (chosen = the data's response, rejected = one complete sample of
    pi_{theta_t}; a prompt whose sample was truncated is skipped), and `train_dpo` trains the
    policy in place against pi_{theta_t}. Returns {"rows", "truncated", "history", "steps"
    (optimizer steps taken), "reference" (pi_{theta_t})}."""
    from ..dpo import train_dpo

    data_rows = check_rows(data_rows, ("prompt", "response"), "data_rows")
    prev = make_reference(policy)
    own, rate = sample_complete(prev, tokenizer, [r["prompt"] for r in data_rows], 1, max_new_tokens, seed)
    rows = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": y[0]} for r, y in zip(data_rows, own) if y]
    history = train_dpo(policy, prev, tokenizer, rows, dpo_cfg) if rows else []
    steps = dpo_cfg.epochs * math.ceil(len(rows) / dpo_cfg.batch_size)
    return {"rows": rows, "truncated": rate, "history": history, "steps": steps, "reference": prev}
