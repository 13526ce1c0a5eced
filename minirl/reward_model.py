"""Reward models: preference data from a hidden gold reward, Bradley-Terry training, evaluation
against the gold, and best-of-n over-optimization of the learned proxy.

Derived in notebooks/05. Reused by notebooks/08 (PPO scores responses with `reward_scores`),
09 (best-of-n: `best_of_n_expectation`, `best_of_n_kl`) and 10 (DPO trains on the same
{"prompt", "chosen", "rejected"} rows: `save_pairs` / `load_pairs`).

The pipeline, step by step:
    sample_responses(policy, tok, prompts, k)     K responses per prompt from the SFT policy
    preference_pairs(prompts, responses, ...)     gold scores -> a (noisy) K-way ranking per prompt
                                                  -> its C(K,2) pairs (losses.ranking_to_pairs)
    train_reward_model(rm, tok, rows, config)     minibatch AdamW on losses.bradley_terry_loss
    train_outcome_model(rm, tok, prompts, responses, labels, config)   an ORM: right / wrong labels,
                                                  binary cross-entropy (lesson 16)
    evaluate_reward_model(rm, tok, rows)          accuracy vs labels and vs gold, calibration, ECE
    score_texts / reward_scores                   r(x, y), read at the LAST real token
    outcome_probabilities / outcome_scorer        an ORM's sigma(r(x, y)) = P(right), and the same as a
                                                  GRPO score_fn (lesson 14)

Label noise (the simulated labeler): a labeler ranks the K responses of a prompt by the gold score
plus Gumbel noise, `sort(gold / temperature + Gumbel(0, 1))` (a Plackett-Luce ranking). Since the
difference of two independent Gumbels is logistic, each pair of that ranking is ordered with
probability exactly sigma((g_i - g_j) / temperature): the labeler follows Bradley-Terry with the
gold as its reward. temperature = 0 is a noiseless labeler. `flip_rate` adds independent flips of
each pair on top (a careless labeler). Pairs whose gold scores tie are dropped by default: the gold
prefers neither, so their label is a coin toss that teaches nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_finite, check_rows, check_tensor
from .lm import generate
from .losses import bradley_terry_loss, ranking_to_pairs  # noqa: F401
from .models import last_token_scores
from .tokenizer import encode_prompt_response, encode_prompts
from .training import model_device, to_device
from .world import gold_sentiment, write_jsonl  # noqa: F401  (kept importable from here)
# Rank-and-pair lives in minirl.labeling (any scorer); re-exported so that reward_model.X keeps working.
from .labeling import (  # noqa: F401
    gold_response_sentiment,
    label_pairs,
    load_pairs,
    noisy_ranking,
    preference_pairs,
    save_pairs,
)
from .utils import config_dict  # noqa: F401  (re-exported: the config as a plain dict)

TINY_RM_NAME = "tiny-rm"  # data/tiny-rm/: the reward model lesson 05 ships


# ------------------------------------------------------------------------------ gold and samples


def _check_prompts(prompts):
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of str, got {type(prompts).__name__}")
    if not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("every prompt must be a non-empty str")


@torch.no_grad()
def sample_responses(policy, tokenizer, prompts, k: int, max_new_tokens: int = 48, temperature: float = 1.0,
                     top_k=None, top_p=None, generator=None, batch_size: int = 512, return_truncated: bool = False):
    """Sample `k` responses for every prompt with `minirl.lm.generate`.

    prompts: N strings. Returns N lists of k decoded responses (EOS and padding removed; a response
    keeps its leading space, so prompt + response is the text). Rows are generated in chunks of
    `batch_size` (prompt i's k copies are consecutive); the same seeded `generator` and the same
    `batch_size` reproduce the same responses (the chunking decides the order of the draws).

    With return_truncated=True, returns (responses, truncated): truncated is N lists of k bools,
    True where a response hit max_new_tokens without emitting EOS. The decoded text of such a
    response looks complete, but `encode_prompt_response` (DPO, reward models) would append an EOS
    the sampler never produced: mark and drop these (lesson 12) or keep them out of EOS-ending data.
    """
    _check_prompts(prompts)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    flat = [p for p in prompts for _ in range(k)]
    texts, cut = [], []
    for s in range(0, len(flat), batch_size):
        ids, mask = to_device(encode_prompts(tokenizer, flat[s:s + batch_size]), model_device(policy))
        out = generate(policy, ids, mask, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        for row, m in zip(out.response_ids, out.response_mask):
            tokens = row[m.bool()].tolist()
            kept = [t for t in tokens if t != tokenizer.eos_token_id]
            texts.append(tokenizer.decode(kept, skip_special_tokens=True))
            cut.append(len(kept) == len(tokens))  # no EOS within max_new_tokens
    responses = [texts[i * k:(i + 1) * k] for i in range(len(prompts))]
    if return_truncated:
        return responses, [cut[i * k:(i + 1) * k] for i in range(len(prompts))]
    return responses


# ------------------------------------------------------------------------------ preference pairs


# noisy_ranking, preference_pairs, save_pairs, load_pairs (and label_pairs, rank-and-pair with any
# scorer) live in minirl.labeling; re-exported above so that `reward_model.preference_pairs` etc.
# keep working.


# ------------------------------------------------------------------------------ scoring


def reward_scores(rm, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """r(x, y) for token sequences: the scalar head read at each row's LAST real token.

    input_ids, attention_mask: (B, T), mask 1 on real tokens, padding on either side (a PPO batch:
    left-padded prompt, then response right-padded after EOS). Returns (B,); gradients flow.
    """
    return last_token_scores(rm(input_ids, attention_mask), attention_mask)  # (B, T) -> (B,)


@torch.no_grad()
def score_texts(rm, tokenizer, prompts, responses, batch_size: int = 256, max_len: int = 96,
                padding_side: str = "right") -> torch.Tensor:
    """r(x, y) for strings: each (prompt, response) encoded as by `encode_prompt_response` (EOS
    appended, so the score is read at the EOS token), in batches. Returns (N,) in the model's dtype."""
    _check_prompts(prompts if isinstance(prompts, str) else list(prompts))  # a bare str is an error
    if isinstance(responses, str):
        raise ValueError("responses must be a list of str, one per prompt, got a single str")
    if len(responses) != len(prompts):
        raise ValueError(f"need one response per prompt, got {len(responses)} responses for {len(prompts)} prompts")
    was_training = rm.training
    rm.eval()
    out = []
    for s in range(0, len(prompts), batch_size):
        enc = encode_prompt_response(tokenizer, list(prompts[s:s + batch_size]), list(responses[s:s + batch_size]),
                                     max_len=max_len, padding_side=padding_side)
        out.append(reward_scores(rm, enc["input_ids"], enc["attention_mask"]))
    rm.train(was_training)
    return torch.cat(out)


# ------------------------------------------------------------------------------ training


@dataclass
class RewardModelConfig:
    """Hyperparameters of `train_reward_model` (one flat config, cleanrl style)."""

    lr: float = 1e-3
    """AdamW learning rate (the tiny model; GPT-2-scale reward models use about 1e-5)."""
    epochs: int = 2
    """Passes over the preference pairs (InstructGPT trains one epoch: more overfits)."""
    batch_size: int = 64
    """Pairs per optimizer step (each step scores 2 * batch_size sequences in one forward)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip; inf disables clipping."""
    max_len: int = 96
    """Token budget per prompt + response (longer responses lose their end)."""
    seed: int = 0
    """Seed of the generator that shuffles the pairs each epoch."""
    log_every: int = 10
    """Record the running loss / accuracy every this many steps."""


def encode_pairs(tokenizer, rows, max_len: int = 96) -> dict:
    """Tokenize preference rows: chosen and rejected texts right-padded to ONE common width.

    Returns {"input_ids", "attention_mask"}: (2B, T), rows 0..B-1 the chosen, B..2B-1 the rejected."""
    rows = check_rows(rows, ("prompt", "chosen", "rejected"), "preference rows")
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    enc = encode_prompt_response(tokenizer, prompts, responses, max_len=max_len)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def train_reward_model(rm, tokenizer, rows, config: RewardModelConfig | None = None) -> list[dict]:
    """Fit a scalar-head model to preference rows by minimizing -log sigma(r_w - r_l).

    rm: a `ScalarHeadModel` (trained in place). rows: dicts with prompt, chosen, rejected.
    Returns the history: one dict per `log_every` steps with step, epoch, loss, accuracy, margin
    (means over those steps' minibatches).
    """
    cfg = config or RewardModelConfig()
    if cfg.batch_size < 1 or cfg.epochs < 1 or not cfg.lr > 0:
        raise ValueError(f"batch_size and epochs must be >= 1 and lr > 0, got {cfg}")
    rows = check_rows(rows, ("prompt", "chosen", "rejected"), "preference rows")
    enc = to_device(encode_pairs(tokenizer, rows, cfg.max_len), model_device(rm))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B = len(rows)
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    rm.train()
    history, acc_buf, step = [], [], 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(B, generator=g)
        for s in range(0, B, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            both = torch.cat([idx, idx + B])  # chosen rows, then their rejected rows
            m = mask[both]
            width = int(m.sum(-1).max())  # right padding: drop all-pad columns
            r = reward_scores(rm, ids[both, :width], m[:, :width])  # (2b,)
            loss, stats = bradley_terry_loss(r[:len(idx)], r[len(idx):])
            check_finite(loss, "reward-model loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), cfg.max_grad_norm)
            opt.step()
            step += 1
            acc_buf.append((float(loss.detach()), float(stats["accuracy"]), float(stats["margin"])))
            if step % cfg.log_every == 0:
                mean = [sum(v) / len(acc_buf) for v in zip(*acc_buf)]
                history.append({"step": step, "epoch": epoch, "loss": mean[0], "accuracy": mean[1], "margin": mean[2]})
                acc_buf = []
    rm.eval()
    return history




def train_outcome_model(rm, tokenizer, prompts, responses, labels, config: RewardModelConfig | None = None) -> list[dict]:
    """Fit an outcome reward model (ORM): r(x, y) read at the EOS token, trained so that
    sigma(r(x, y)) predicts whether y is right (Cobbe et al. 2021's verifier; Lightman et al. 2023's
    ORM), by minimizing the binary cross-entropy -[l log sigma(r) + (1 - l) log(1 - sigma(r))].

    rm: a `ScalarHeadModel` (trained in place); prompts, responses: lists of N strings; labels: N
    numbers in [0, 1] (1 = right, e.g. an outcome verifier's verdicts on sampled responses).
    Minibatches of config.batch_size, reshuffled every epoch (generator seeded with config.seed),
    AdamW steps through `minirl.training.optimizer_step` (gradient clipping at max_grad_norm).
    Returns the history: every `log_every` steps {step, epoch, loss, accuracy} (means over those
    steps; accuracy of sigma(r) > 1/2 against the labels). Leaves rm in eval mode."""
    import torch.nn.functional as F

    from .training import optimizer_step

    cfg = config or RewardModelConfig()
    if cfg.batch_size < 1 or cfg.epochs < 1 or not cfg.lr > 0:
        raise ValueError(f"batch_size and epochs must be >= 1 and lr > 0, got {cfg}")
    _check_prompts(prompts)
    prompts, responses = list(prompts), list(responses)
    y = torch.as_tensor(labels, dtype=torch.get_default_dtype()).flatten()
    if not (len(responses) == len(prompts) == y.numel()):
        raise ValueError(f"need one response and one label per prompt, got {len(prompts)} prompts, "
                         f"{len(responses)} responses, {y.numel()} labels")
    if not bool(((y >= 0) & (y <= 1)).all()):
        raise ValueError("labels must be in [0, 1] (1 = right)")
    enc = encode_prompt_response(tokenizer, prompts, responses, max_len=cfg.max_len)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    clip = cfg.max_grad_norm if math.isfinite(cfg.max_grad_norm) else None

    def loss_fn(model, mb):
        b_ids, b_mask, b_y = mb
        r = reward_scores(model, b_ids, b_mask)  # (b,)
        loss = F.binary_cross_entropy_with_logits(r, b_y.to(r.dtype))
        return loss, {"accuracy": ((r > 0).to(r.dtype) == (b_y > 0.5).to(r.dtype)).to(r.dtype).mean()}

    rm.train()
    history, buf, step = [], [], 0
    for epoch in range(cfg.epochs):
        for idx in torch.randperm(len(prompts), generator=g).split(cfg.batch_size):
            width = int(mask[idx].sum(-1).max())  # right padding: drop all-pad columns
            out = optimizer_step(rm, opt, [(ids[idx, :width], mask[idx, :width], y[idx])], loss_fn,
                                 max_grad_norm=clip)
            step += 1
            buf.append((out["loss"], out["accuracy"]))
            if step % cfg.log_every == 0:
                history.append({"step": step, "epoch": epoch, "loss": sum(b[0] for b in buf) / len(buf),
                                "accuracy": sum(b[1] for b in buf) / len(buf)})
                buf = []
    rm.eval()
    return history


@torch.no_grad()
def outcome_probabilities(orm, tokenizer, prompts, responses, batch_size: int = 256,
                          max_len: int = 96) -> torch.Tensor:
    """An outcome reward model's P(right | x, y) = sigma(r(x, y)) for N (prompt, response) strings:
    `score_texts` (EOS appended, read at the EOS) through a sigmoid, the probability that
    `train_outcome_model`'s cross-entropy fits. Returns (N,) in [0, 1], the model's dtype. Any
    response string, the empty one included, gets a defined value. Leaves the model's train/eval
    mode as it was. Bad input is rejected by `score_texts`."""
    return torch.sigmoid(score_texts(orm, tokenizer, prompts, responses, batch_size=batch_size,
                                     max_len=max_len))


def outcome_scorer(orm, tokenizer, batch_size: int = 256, max_len: int = 96):
    """An ORM as a reward under the shared contract: score_fn(samples) -> (B,) probabilities
    `outcome_probabilities(orm, tokenizer, samples.prompts, samples.responses)`, for
    `minirl.algos.grpo.train_grpo` (as `verifiers.scorer(name)` is for a verifier). It scores the
    decoded text, like the verifiers, so a response cut at max_new_tokens is scored as if it
    ended there. No gradient reaches the ORM. (`rollout.reward_model_scorer` reads the sampled
    token ids instead, at each row's last real token; an ORM trained by `train_outcome_model` saw
    the text with EOS appended, which is what this scorer feeds it.)"""
    def score(samples) -> torch.Tensor:
        return outcome_probabilities(orm, tokenizer, list(samples.prompts), list(samples.responses),
                                     batch_size=batch_size, max_len=max_len)
    return score



# ------------------------------------------------------------------------------ evaluation


def pairwise_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> float:
    """Fraction of pairs with r_chosen > r_rejected, a tie counting 1/2. Both (B,)."""
    check_tensor(chosen_scores, "chosen_scores", ndim=1)
    check_tensor(rejected_scores, "rejected_scores", ndim=1)
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.numel() == 0:
        raise ValueError(f"need two non-empty (B,) tensors of one shape, got {tuple(chosen_scores.shape)} "
                         f"and {tuple(rejected_scores.shape)}")
    d = chosen_scores - rejected_scores
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


def right_over_wrong(scores: torch.Tensor, correct: torch.Tensor, within: bool = False) -> float:
    """How well a score separates right answers from wrong ones: the fraction of (right, wrong)
    pairs in which the right answer scores higher, a tie counting 1/2 (the area under the ROC
    curve of `scores` for `correct`; 1/2 is chance).

    scores, correct: (P, n) for n answers to each of P problems (or (N,) for one pool); correct
    holds 0/1. within=False pairs every right answer with every wrong one, across problems too;
    within=True only pairs answers to the same problem (row), so a score that knows WHICH
    QUESTIONS are hard but not which answers are right sits at 1/2 (lesson 14's ORM). Rows
    without both a right and a wrong answer add no pairs. Raises ValueError if no pair exists."""
    check_tensor(scores, "scores", floating=True)
    check_tensor(correct, "correct")
    if scores.shape != correct.shape or scores.ndim not in (1, 2):
        raise ValueError(f"scores and correct must be (N,) or (P, n) of one shape, got {tuple(scores.shape)} "
                         f"and {tuple(correct.shape)}")
    if not bool(((correct == 0) | (correct == 1)).all()):
        raise ValueError("correct must hold 0/1 values only")
    rows = range(scores.shape[0]) if within and scores.ndim == 2 else [slice(None)]
    pairs = [(scores[i][correct[i] == 1], scores[i][correct[i] == 0]) for i in rows]
    pairs = [(a, b) for a, b in pairs if a.numel() and b.numel()]
    if not pairs:
        raise ValueError("right_over_wrong needs at least one right and one wrong answer"
                         + (" to the same problem" if within else ""))
    c = torch.cat([a.repeat_interleave(len(b)) for a, b in pairs])  # every (right, wrong) pair
    w = torch.cat([b.repeat(len(a)) for a, b in pairs])
    return pairwise_accuracy(c, w)


def calibration_bins(probs: torch.Tensor, outcomes: torch.Tensor, n_bins: int = 10) -> dict:
    """Reliability table of predicted probabilities against observed 0/1 outcomes.

    probs, outcomes: (M,). Bins are equal-width on [0, 1] (the last includes 1). Returns
    {"edges" (n_bins + 1,), "mean_prob", "frequency", "count" (n_bins,) each, "ece"}: per bin the
    mean prediction, the empirical frequency of outcome 1, the count (empty bins give NaN means),
    and the expected calibration error sum_b count_b / M * |frequency_b - mean_prob_b|.
    """
    check_tensor(probs, "probs", ndim=1, floating=True)
    check_tensor(outcomes, "outcomes", ndim=1)
    if probs.shape != outcomes.shape or probs.numel() == 0:
        raise ValueError(f"probs and outcomes must be non-empty and of one shape, got {tuple(probs.shape)} and {tuple(outcomes.shape)}")
    if bool(((probs < 0) | (probs > 1)).any()):
        raise ValueError("probs must lie in [0, 1]")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    p, y = probs.double(), outcomes.double()
    b = (p * n_bins).long().clamp(max=n_bins - 1)  # (M,) bin index
    count = torch.bincount(b, minlength=n_bins).double()
    with torch.no_grad():
        mean_prob = torch.bincount(b, weights=p, minlength=n_bins) / count
        freq = torch.bincount(b, weights=y, minlength=n_bins) / count
        nz = count > 0
        ece = float((count[nz] / count.sum() * (freq[nz] - mean_prob[nz]).abs()).sum())
    return {"edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64), "mean_prob": mean_prob,
            "frequency": freq, "count": count, "ece": ece}


def pair_calibration(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, n_bins: int = 10) -> dict:
    """Calibration of the Bradley-Terry probability sigma(r_w - r_l) against the labels.

    Every pair is used in both orientations, (sigma(r_w - r_l), outcome 1) and
    (sigma(r_l - r_w), outcome 0), so the table does not depend on which side is listed first
    (a model that always says 0.5 is perfectly calibrated and useless). Returns `calibration_bins`'s dict.
    """
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(f"chosen and rejected scores must have one shape, got {tuple(chosen_scores.shape)} and {tuple(rejected_scores.shape)}")
    p = torch.sigmoid((chosen_scores - rejected_scores).double())  # (B,)
    return calibration_bins(torch.cat([p, 1 - p]), torch.cat([torch.ones_like(p), torch.zeros_like(p)]), n_bins)


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two (M,) tensors (M >= 2, neither constant)."""
    check_tensor(x, "x", ndim=1)
    check_tensor(y, "y", ndim=1)
    if x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"need two (M,) tensors of one shape with M >= 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = (x.square().sum() * y.square().sum()).sqrt()
    if den == 0:
        raise ValueError("pearson is undefined when x or y is constant")
    return float((x * y).sum() / den)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    _, inv = torch.unique(x, return_inverse=True)  # tied values share the mean of their ranks
    sums = torch.zeros(int(inv.max()) + 1, dtype=torch.float64).index_add_(0, inv, ranks)
    counts = torch.bincount(inv).double()
    return (sums / counts)[inv]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson on average ranks, so ties are handled) of two (M,) tensors."""
    check_tensor(x, "x", ndim=1)
    check_tensor(y, "y", ndim=1)
    return pearson(_average_ranks(x.double()), _average_ranks(y.double()))


@torch.no_grad()
def evaluate_reward_model(rm, tokenizer, rows, n_bins: int = 10, max_len: int = 96) -> dict:
    """Score held-out preference rows and compare with the labels and with the gold.

    Returns {"accuracy" (vs the labels, noisy), "gold_accuracy" (vs the gold order: the pair
    ordered by gold_chosen vs gold_rejected), "label_gold_agreement" (how often the labels follow
    the gold), "ece", "calibration" (pair_calibration's dict), "pearson", "spearman" (scores vs
    gold over all scored responses), "chosen_scores", "rejected_scores" (B,)}.
    """
    if not rows:
        raise ValueError("rows is empty")
    enc = encode_pairs(tokenizer, rows, max_len)
    rm.eval()
    r = torch.cat([reward_scores(rm, enc["input_ids"][s:s + 512], enc["attention_mask"][s:s + 512])
                   for s in range(0, enc["input_ids"].shape[0], 512)])
    B = len(rows)
    rc, rr = r[:B], r[B:]
    gc = torch.tensor([row["gold_chosen"] for row in rows], dtype=torch.float64)
    gr = torch.tensor([row["gold_rejected"] for row in rows], dtype=torch.float64)
    gold_sign = torch.sign(gc - gr)  # +1 where the label follows the gold
    if bool((gold_sign == 0).any()):
        raise ValueError("rows contain gold ties; build them with preference_pairs(drop_ties=True)")
    cal = pair_calibration(rc, rr, n_bins)
    return {
        "accuracy": pairwise_accuracy(rc, rr),
        "gold_accuracy": pairwise_accuracy(rc * gold_sign.float(), rr * gold_sign.float()),
        "label_gold_agreement": float((gold_sign > 0).double().mean()),
        "ece": cal["ece"], "calibration": cal,
        "pearson": pearson(torch.cat([rc, rr]), torch.cat([gc, gr])),
        "spearman": spearman(torch.cat([rc, rr]), torch.cat([gc, gr])),
        "chosen_scores": rc, "rejected_scores": rr,
    }


# ------------------------------------------------------------------------------ best-of-n


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon et al. 2020, appendix; used by
    Gao et al. 2022). Exact only in the no-atom limit: a continuous reward AND no single response
    with noticeable probability under the base policy (distinct rewards are not enough: lesson 09's
    V = 20 categorical). Beirami et al. (2024) show it is an UPPER bound in general."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(proxy: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """E[value of the proxy's best of n], over uniformly random n-subsets of N samples per prompt.

    proxy, values: (P, N), N samples for each of P prompts (proxy decides, values is measured: the
    proxy itself, or the gold). Sort each row by proxy ascending; the sample of rank i (1-based) is
    the best of a random n-subset with probability C(i-1, n-1) / C(N, n). This averages over all
    C(N, n) subsets exactly, so one pool of N samples gives a low-variance curve for every n <= N
    (the unbiased estimator of Gao et al. 2022, appendix). Proxy ties are broken by sample order.
    Returns (P,).
    """
    check_tensor(proxy, "proxy", ndim=2)
    if values.shape != proxy.shape:
        raise ValueError(f"values must have the proxy's shape {tuple(proxy.shape)}, got {tuple(values.shape)}")
    N = proxy.shape[1]
    if not isinstance(n, int) or not 1 <= n <= N:
        raise ValueError(f"n must be an int in [1, {N}], got {n!r}")
    order = torch.argsort(proxy, dim=1, stable=True)  # ascending
    v = values.double().gather(1, order)  # (P, N)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    log_c = torch.lgamma(i) - torch.lgamma(i - n + 1) - torch.lgamma(torch.tensor(float(n)))  # log C(i-1, n-1)
    log_w = torch.where(i >= n, log_c, torch.full_like(i, -math.inf))
    log_w = log_w - (math.lgamma(N + 1) - math.lgamma(n + 1) - math.lgamma(N - n + 1))  # / C(N, n)
    return (v * log_w.exp()).sum(1)
