"""Where a policy sits on the reward-KL plane, measured the same way for every algorithm.

    evaluate_policy(policy, ref, tok, prompts, {"proxy": score_fn, "gold": gold_fn}, ...)

One fresh sample per prompt (repeat prompts for more), then means and standard errors over the
samples of: the per-sequence k1 estimate of KL(pi || pi_ref) (`minirl.rollout.sequence_kl`), each
named score, the fraction truncated at the length cap, the mean length and the mean sequence
log-prob. `minirl.rlhf.evaluate_policy` (lessons 08-09) and `minirl.dpo.evaluate_samples`
(lessons 10-12) are thin wrappers of it, so the points of PPO, best-of-n and DPO compare.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from .checks import check_prompts, check_tensor
from .rollout import sample, sequence_kl

__all__ = ["evaluate_policy"]


def _per_sample(name: str, v) -> torch.Tensor:
    v = torch.as_tensor(v).detach().double()
    check_tensor(v, name, ndim=1)
    return v


@torch.no_grad()
def evaluate_policy(policy, ref_model, tokenizer, prompts, scorers: Mapping[str, Callable] | None = None, *,
                    max_new_tokens: int = 16, temperature: float = 1.0, generator=None, min_samples: int = 2,
                    return_samples: bool = False, kl_chunk: int | None = None,
                    _root: Callable[[int], float] = math.sqrt):
    """A held-out evaluation of `policy`: one fresh sample per prompt (list[str]; a bare str is
    rejected), then means and standard errors (sample std / sqrt(n)) over the samples.

    scorers   {name: fn(samples) -> (B,) tensor, or a dict {key: (B,) tensor}}; a dict result is
              reported as "<name>_<key>" (key "" as "<name>"). Wrap a per-text fn(prompt, response)
              with `minirl.rollout.text_scorer`, a reward model with `reward_model_scorer`.
    min_samples   fewer prompts raise ValueError (2: a standard error needs two samples; with 1 the
              standard errors are nan)
    return_samples   also return the `Samples` drawn: (stats, samples)
    ref_model  None skips the KL (no "kl" keys): for pi_ref itself, or wherever no KL is reported;
              the reference pass costs about as much as the sampling
    kl_chunk  passed to `sequence_kl` as `chunk` (None: one reference pass over all samples)

    Returns floats {"n", "kl", "kl_sem", <name>, <name>_sem for each score, "truncated", "length",
    "logp"} (in that order; no "kl", "kl_sem" when ref_model is None): kl is the per-sequence k1 estimate of KL(pi || pi_ref) at
    `temperature` (sum over the response of log pi - log pi_ref, log pi the sampler's);
    truncated the fraction of samples that hit max_new_tokens without EOS (their length and KL are
    censored at the cap); length the mean response length in tokens (EOS included); logp the mean
    sequence log-prob log pi(y | x) of the samples (minus a Monte-Carlo estimate of the sequence
    entropy). The policy is left in eval mode. Order of work: sample (the only draw from
    `generator`), reference pass, then the scorers in the order given.
    """
    check_prompts(prompts)
    prompts = list(prompts)
    n = len(prompts)
    if n < min_samples:
        raise ValueError(f"evaluate_policy needs at least {min_samples} prompts (one sample each) for a standard "
                         f"error, got {n}")
    scorers = dict(scorers or {})
    for name, fn in scorers.items():
        if name in ("n", "kl", "truncated", "length", "logp") or not callable(fn):
            raise ValueError(f"scorers must map new names to callables fn(samples) -> (B,), got {name!r}: {fn!r}")
    policy.eval()
    s = sample(policy, tokenizer, prompts, max_new_tokens, temperature=temperature, generator=generator)
    values = {} if ref_model is None else {"kl": sequence_kl(ref_model, s, temperature, chunk=kl_chunk)}
    for name, fn in scorers.items():
        out = fn(s)
        items = out.items() if isinstance(out, dict) else [("", out)]
        values.update({f"{name}_{k}" if k else name: v for k, v in items})
    stats = {"n": n}
    root = _root(n)
    for k, v in values.items():
        v = _per_sample(k, v)
        if v.shape[0] != n:
            raise ValueError(f"{k} must have one value per sample ({n},), got {tuple(v.shape)}")
        stats[k] = float(v.mean())
        stats[f"{k}_sem"] = float(v.std() / root) if n > 1 else float("nan")
    stats["truncated"] = float((~s.has_eos).double().mean())
    stats["length"] = float(s.response_mask.sum(-1).double().mean())
    stats["logp"] = float(s.logprobs.sum(-1).mean())
    return (stats, s) if return_samples else stats
