"""The on-policy plumbing every RL algorithm shares (PPO, GRPO/RLOO, REINFORCE, online DPO,
best-of-n): sample responses, score them, take reference log-probs, measure the KL.

    make_reference(policy)                  a frozen copy: pi_ref
    make_generator(seed, device)            a seeded torch.Generator on the model's device
    sample(policy, tok, prompts, T, ...)    one response per prompt -> Samples
    Samples                                 the rollout's columns (text, ids, masks, log-probs, scores)
    text_scorer(fn), reward_model_scorer(rm)   per-text reward / reward model -> score_fn(samples) (B,)
    apply_missing_eos_penalty(scores, has_eos, penalty)
    per_token_kl(logprobs, ref_logprobs, mask, estimator)    k1/k2/k3 per token, (B, T)
    kl_penalized_rewards(scores, ..., kl_coef)              RLHF's per-token rewards and KL
    sequence_kl(ref_model, samples, chunk=None)   per-sequence k1 KL(pi || pi_ref), (B,)
    last_token_position(mask)               column of each row's last real token

Derived in notebooks/04 (sampling, the reference) and notebooks/08 (the KL-penalized reward,
Ziegler et al. 2019); moved out of `minirl.rlhf` (lesson 08's PPO) so that every algorithm imports
them from here. `minirl.rlhf` re-exports every name, so `rlhf.sample` etc. keep working.

Conventions: prompts are left-padded (width P), responses right-padded after EOS (width T);
per-token tensors are (B, T) over the response columns; `response_mask` is 1 up to and including
the first EOS. KL direction: KL(pi_theta || pi_ref), estimated on samples from pi_theta with
log_r = ref_logprobs - logprobs (minirl.kl). Device: everything `sample` returns lives on the
policy's device; a scorer returns its scores on the samples' device.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import kl as kl_mod
from .checks import as_float_mask, check_int, check_prompts, check_tensor
from .lm import Generation, generate, response_logprobs
from .models import last_token_scores
from .tokenizer import encode_prompts
from .training import model_device

__all__ = [
    "KL_ESTIMATORS",
    "make_reference",
    "make_generator",
    "check_generator",
    "Samples",
    "sample",
    "text_scorer",
    "reward_model_scorer",
    "apply_missing_eos_penalty",
    "per_token_kl",
    "kl_penalized_rewards",
    "last_token_position",
    "sequence_kl",
]

KL_ESTIMATORS = {"k1": kl_mod.k1, "k2": kl_mod.k2, "k3": kl_mod.k3}


# ------------------------------------------------------------ models, RNG


def make_reference(policy):
    """A frozen copy of the policy (eval mode, no gradients): pi_ref."""
    ref = copy.deepcopy(policy)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def make_generator(seed: int, device="cpu") -> torch.Generator:
    """A torch.Generator on `device` (pass `model_device(policy)`), seeded with `seed`. On CPU this
    is `torch.Generator().manual_seed(seed)`, the generator every lesson uses."""
    return torch.Generator(device=device).manual_seed(seed)


def check_generator(generator, device) -> None:
    """`generator` must be None or a torch.Generator on `device`'s type (torch.multinomial on CUDA
    probabilities raises with a CPU generator; this says so before any work is done)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != torch.device(device).type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}: "
                         f"use make_generator(seed, {str(device)!r}) (torch.Generator(device=...))")


# -------------------------------------------------------------- the samples


@dataclass
class Samples:
    """One rollout of B responses (prompt width P, response width T): `lm.generate`'s result, the
    decoded text, and the columns that later stages add.

    prompts, responses  list[str]         decoded text (responses without EOS/padding)
    generation          lm.Generation     what the sampler returned, unchanged: sequences (B, P + T),
                                          attention_mask (B, P + T), response_ids (B, T),
                                          response_mask (B, T) long, logprobs (B, T), prompt_length P
    has_eos             (B,) bool         the response emitted EOS
    ref_logprobs        (B, T)            log pi_ref of the same tokens (same temperature)
    values              (B, T)            V(state before token t) from the critic
    raw_scores          (B,)              the score_fn output as returned
    scores              (B,)              reward-model score, after the EOS penalty / normalization

    Read the generation's tensors through the same names: `s.sequences`, `s.attention_mask`,
    `s.response_ids`, `s.prompt_length`, `s.logprobs` (log pi_old of each sampled token, the
    sampler's, 0 on padding) and `s.response_mask`, which is the generation's mask as float32
    (whatever the default dtype), the dtype the losses multiply by.
    """

    prompts: list
    responses: list
    generation: Generation | None
    has_eos: torch.Tensor
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    raw_scores: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    response_mask: torch.Tensor | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        if self.generation is not None:
            if not isinstance(self.generation, Generation):
                raise ValueError(f"generation must be an lm.Generation, got {type(self.generation).__name__}")
            self.response_mask = self.generation.response_mask.float()

    def _gen(self, name):
        return None if self.generation is None else getattr(self.generation, name)

    @property
    def sequences(self) -> torch.Tensor | None:
        return self._gen("sequences")

    @property
    def attention_mask(self) -> torch.Tensor | None:
        return self._gen("attention_mask")

    @property
    def response_ids(self) -> torch.Tensor | None:
        return self._gen("response_ids")

    @property
    def logprobs(self) -> torch.Tensor | None:
        return self._gen("logprobs")

    @property
    def prompt_length(self) -> int | None:
        return self._gen("prompt_length")


def text_scorer(fn: Callable[[str, str], float]) -> Callable[[Samples], torch.Tensor]:
    """Wrap a per-text reward fn(prompt, response) -> float as a score_fn(samples) -> (B,) in the
    default dtype, on the samples' device."""
    def score(samples: Samples) -> torch.Tensor:
        return torch.tensor([float(fn(p, r)) for p, r in zip(samples.prompts, samples.responses)],
                            device=samples.sequences.device if samples.sequences is not None else None)
    return score


def reward_model_scorer(rm) -> Callable[[Samples], torch.Tensor]:
    """A ScalarHeadModel reward model as a score_fn: its value at each row's LAST real token
    (the EOS if one was emitted, else the last generated token), no gradient. The RM must share
    the policy's tokenizer."""
    @torch.no_grad()
    def score(samples: Samples) -> torch.Tensor:
        rm.eval()
        return last_token_scores(rm(samples.sequences, samples.attention_mask), samples.attention_mask)
    return score


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """scores (B,) minus `penalty` where has_eos (B,) bool is False; unchanged if penalty is None.
    A response cut at max_new_tokens is unfinished text that the reward model may still like; the
    penalty makes "never stop" unattractive (Huang et al. 2022; TRL's missing_eos_penalty)."""
    check_tensor(scores, "scores", ndim=1, floating=True)
    check_tensor(has_eos, "has_eos", ndim=1)
    if has_eos.shape != scores.shape:
        raise ValueError(f"has_eos must have shape {tuple(scores.shape)}, got {tuple(has_eos.shape)}")
    if penalty is None:
        return scores
    return scores - float(penalty) * (~has_eos.bool()).to(scores.dtype)


def per_token_kl(logprobs, ref_logprobs, response_mask, estimator: str = "k1") -> torch.Tensor:
    """The per-token KL estimate k(log_r) with log_r = ref_logprobs - logprobs, 0 on padding.
    (B, T) each -> (B, T). Summed over t it estimates the sequence KL(pi_theta || pi_ref)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(KL_ESTIMATORS)}, got {estimator!r}")
    check_tensor(logprobs, "logprobs", ndim=2, floating=True)
    check_tensor(ref_logprobs, "ref_logprobs", ndim=2, floating=True)
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(f"ref_logprobs must have shape {tuple(logprobs.shape)}, got {tuple(ref_logprobs.shape)}")
    m = as_float_mask(response_mask, logprobs, "response_mask")
    log_r = torch.where(m > 0, ref_logprobs - logprobs, torch.zeros_like(logprobs))
    return KL_ESTIMATORS[estimator](log_r) * m


def kl_penalized_rewards(scores, logprobs, ref_logprobs, response_mask, kl_coef: float, estimator: str = "k1"):
    """Per-token rewards of RLHF (Ziegler et al. 2019; Stiennon et al. 2020, Eq. 2):

        r_t = -beta * k(log_r_t)  +  [t = last response token] * score,   log_r_t = log pi_ref - log pi_theta

    With k1, -beta * k1 = beta * (log pi_ref - log pi_theta): sampling a token the reference finds
    less likely than the policy does costs reward. Summed over the response, E[sum_t r_t] =
    E[score] - beta * KL(pi_theta || pi_ref) (for k1 and k3, which are unbiased).

    scores: (B,) one score per response. logprobs, ref_logprobs, response_mask: (B, T); every row
    of the mask needs >= 1 token; the score goes on each row's LAST masked-in token (the EOS, or
    the last token of a truncated response). Returns (rewards, kl), both (B, T), 0 on padding,
    detached: kl is the per-token estimate that was penalized.
    """
    check_tensor(scores, "scores", ndim=1, floating=True)
    kl = per_token_kl(logprobs.detach(), ref_logprobs.detach(), response_mask, estimator)
    if scores.shape[0] != kl.shape[0]:
        raise ValueError(f"scores must have shape ({kl.shape[0]},) (one per response), got {tuple(scores.shape)}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    m = as_float_mask(response_mask, kl, "response_mask")
    if bool((m.sum(-1) == 0).any()):
        raise ValueError("every row of response_mask needs at least one response token")
    rewards = -kl_coef * kl
    last = last_token_position(m)  # (B,)
    rewards = rewards.scatter_add(1, last[:, None], scores.detach().to(rewards.dtype)[:, None])
    return rewards, kl


def last_token_position(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B,) long: the column of each row's last 1 (rows need at least one)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, pos, torch.full_like(pos, -1)).max(-1).values


@torch.no_grad()
def sample(policy, tokenizer, prompts, max_new_tokens: int, temperature: float = 1.0, generator=None) -> Samples:
    """Generate one response per prompt (list[str]; repeat a prompt n times for n samples) and
    decode it. Returns a `Samples` without reference log-probs, values or scores.

    Device: the prompts are encoded and moved to the policy's device, so every tensor of the
    result lives there. `generator` (None: torch's global RNG) must be on that device too, since
    torch.multinomial draws with it: `make_generator(seed, model_device(policy))`. A bare str is
    rejected (it would be sampled as one prompt per character)."""
    check_prompts(prompts)
    device = model_device(policy)
    check_generator(generator, device)
    ids, mask = encode_prompts(tokenizer, list(prompts))  # (B, P), left-padded
    ids, mask = ids.to(device), mask.to(device)
    gen = generate(policy, ids, mask, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
                   temperature=temperature, generator=generator)
    has_eos = ((gen.response_ids == tokenizer.eos_token_id) & (gen.response_mask > 0)).any(-1)
    responses = [tokenizer.decode(r[m > 0], skip_special_tokens=True) for r, m in zip(gen.response_ids, gen.response_mask)]
    return Samples(list(prompts), responses, gen, has_eos)


def _sequence_kl(ref_model, sequences, attention_mask, prompt_length, logprobs, response_mask, temperature):
    ref_lp = response_logprobs(ref_model, sequences, attention_mask, prompt_length, temperature)
    return per_token_kl(logprobs, ref_lp * response_mask, response_mask, "k1").sum(-1)


@torch.no_grad()
def sequence_kl(ref_model, s: Samples, temperature: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """Per-sequence k1 estimate of KL(pi || pi_ref) for samples drawn from pi: (B,) =
    sum_t (log pi(y_t) - log pi_ref(y_t)) over the response, with log pi the sampler's log-probs.
    Its batch mean is the "measured KL" of the reward-KL frontier (lessons 08-10).

    chunk: None runs the reference over the whole batch at once. An int runs it over groups of
    `chunk` samples of similar length (sorted by response length), each cut to its longest
    response: for long, uneven responses most of the (B, T) batch is padding, and this skips it
    (lesson 11 evaluates 64-token responses this way). Padding counts nowhere, so the values
    agree with the whole-batch pass up to float rounding (the matrix shapes differ)."""
    args = (s.sequences, s.attention_mask, s.prompt_length, s.logprobs, s.response_mask)
    if chunk is None:
        return _sequence_kl(ref_model, *args, temperature)
    check_int(chunk, "chunk")
    seq, attn, P, lp, mask = args
    lengths = mask.sum(-1)
    kl = torch.empty(lengths.shape[0], dtype=lp.dtype, device=lp.device)
    for idx in lengths.argsort().split(chunk):
        w = int(mask[idx].sum(-1).max())  # drop the columns that are padding in every row
        kl[idx] = _sequence_kl(ref_model, seq[idx, : P + w], attn[idx, : P + w], P, lp[idx, :w], mask[idx, :w],
                               temperature)
    return kl
