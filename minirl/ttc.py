"""Test-time compute: pass@k, majority vote (self-consistency), weighted majority vote, best-of-n
selection, and the unbiased estimators of their accuracy at k samples from a pool of n.

Derived in notebooks/16_r1_recipe.ipynb (used by lesson 14 for pass@k). All functions are pure.

    pass_at_k(n, c, k)             P(at least one of k samples, drawn WITHOUT replacement from n of
                                   which c are correct, is correct) = 1 - C(n-c, k) / C(n, k)
                                   (Chen et al. 2021, the unbiased pass@k estimator), evaluated as
                                   the stable product 1 - prod_{i=n-c+1}^{n} (1 - k / i);
                                   vectorized over problems.
    majority_vote(answers)         the most frequent answer (self-consistency, Wang et al. 2023)
    weighted_majority_vote(answers, weights)   the answer with the largest total weight
    best_of_n_select(scores)       index of the highest score (first on ties)
    maj_at_k(answers, correct, k)  E[majority vote of a uniform k-subset of the n answers is correct]
    best_of_k(scores, correct, k)  E[the highest-scored of a uniform k-subset is correct]

THE RULES (one for every function):
  * Unparsable answers are None. None never wins a vote: it is dropped before counting (an
    abstention). A vote with no parsable answer returns None, which counts as wrong.
  * Ties in a vote: `majority_vote` / `weighted_majority_vote` return the tied answer that appears
    FIRST in the list (the earliest drawn). Over a uniformly random order of the k samples this is a
    uniform choice among the tied answers, so `maj_at_k` credits a tie among m answers that contains
    the correct one with 1/m. The same holds for `best_of_n_select` (first of the tied maxima, as
    `minirl.bon.best_of_n`) and `best_of_k` (1/m credit for each correct sample among m tied maxima).
  * Answers are compared with ==; they must be hashable (ints, strings, ...).
  * Bad input (k outside 1..n, c outside 0..n, non-integers, mismatched lengths, non-finite or
    negative weights, NaN scores) raises ValueError.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .checks import check_tensor


# ---------------------------------------------------------------- pass@k
def _int_tensor(x, name):
    if isinstance(x, bool):
        raise ValueError(f"{name} must be an int or an integer tensor, got bool")
    if isinstance(x, int):
        return torch.tensor(x, dtype=torch.long), True
    if isinstance(x, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
            raise ValueError(f"{name} must hold ints, got {x!r}")
        return torch.tensor(x, dtype=torch.long), False
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            if not bool(torch.isfinite(x).all()) or not bool((x == x.round()).all()):
                raise ValueError(f"{name} must hold whole numbers, got {x}")
        elif x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must be an integer tensor, got dtype {x.dtype}")
        return x.long(), False
    raise ValueError(f"{name} must be an int, a list of ints or a tensor, got {type(x).__name__}")


def pass_at_k(n, c, k: int):
    """Unbiased pass@k from n samples per problem of which c are correct:

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

    (= 1 exactly when n - c < k). n: int or (P,) ints; c: int or (P,) ints, 0 <= c <= n;
    k: int, 1 <= k <= min(n). Returns a float for scalar n and c, else a tensor (P,) in float64.
    The product never forms a binomial coefficient, so n in the thousands is fine."""
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    nt, n_scalar = _int_tensor(n, "n")
    ct, c_scalar = _int_tensor(c, "c")
    if nt.ndim > 1 or ct.ndim > 1:
        raise ValueError(f"n and c must be scalars or 1-D, got shapes {tuple(nt.shape)}, {tuple(ct.shape)}")
    try:
        nt, ct = torch.broadcast_tensors(nt, ct)
    except RuntimeError as e:
        raise ValueError(f"n and c must have matching lengths, got {tuple(nt.shape)} and {tuple(ct.shape)}") from e
    if nt.numel() == 0:
        raise ValueError("n and c must not be empty")
    if bool((ct < 0).any()) or bool((ct > nt).any()):
        raise ValueError(f"need 0 <= c <= n for every problem, got n={nt.tolist()}, c={ct.tolist()}")
    if k < 1 or bool((nt < k).any()):
        raise ValueError(f"need 1 <= k <= n, got k={k}, min n={int(nt.min())}")
    flat_n, flat_c = nt.reshape(-1), ct.reshape(-1)
    i = torch.arange(1, int(flat_n.max()) + 1, dtype=torch.float64)  # (I,)
    in_range = (i[None, :] > (flat_n - flat_c)[:, None]) & (i[None, :] <= flat_n[:, None])  # (P, I)
    factor = torch.where(in_range, (1.0 - k / i)[None, :].expand_as(in_range), torch.ones(()))
    prod = factor.clamp(min=0.0).prod(dim=1)  # a factor 1 - k/k = 0 appears whenever n - c < k
    out = torch.where(flat_n - flat_c < k, torch.ones_like(prod), 1.0 - prod).reshape(nt.shape)
    return float(out) if (n_scalar and c_scalar) else out


# ---------------------------------------------------------------- votes
def _check_answers(answers, name="answers"):
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise ValueError(f"{name} must be a list of answers (None = unparsable), got {type(answers).__name__}")
    if len(answers) == 0:
        raise ValueError(f"{name} must not be empty")
    for a in answers:
        try:
            hash(a)
        except TypeError as e:
            raise ValueError(f"{name} must hold hashable answers, got {type(a).__name__}") from e


def weighted_majority_vote(answers, weights):
    """The answer with the largest total weight; None entries are dropped (they never win); ties go
    to the tied answer that appears first. Returns None when no answer is parsable.
    weights: a list or 1-D tensor of finite, non-negative numbers, one per answer (e.g. a verifier's
    probability that the answer is right)."""
    _check_answers(answers)
    if isinstance(weights, torch.Tensor):
        if weights.ndim != 1:
            raise ValueError(f"weights must be 1-D, got shape {tuple(weights.shape)}")
        weights = weights.tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ValueError(f"weights must be a list or 1-D tensor of numbers, got {type(weights).__name__}")
    if len(weights) != len(answers):
        raise ValueError(f"weights must match answers in length, got {len(weights)} and {len(answers)}")
    total: dict = {}
    for a, w in zip(answers, weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite and non-negative, got {w!r}")
        if a is not None:
            total[a] = total.get(a, 0.0) + float(w)  # dicts keep first-appearance order
    if not total:
        return None
    best = max(total.values())
    return next(a for a, t in total.items() if t == best)


def majority_vote(answers):
    """The most frequent parsable answer (self-consistency); None entries are dropped; ties go to the
    tied answer that appears first. Returns None when no answer is parsable."""
    _check_answers(answers)
    return weighted_majority_vote(answers, [1.0] * len(answers))


def best_of_n_select(scores: torch.Tensor):
    """Index of the highest score: scores (n,) -> int, or (B, n) -> LongTensor (B,) of indices within
    each row. The first of tied maxima wins (as `minirl.bon.best_of_n`, whose flat index this is
    modulo n). Scores must be finite."""
    check_tensor(scores, "scores", floating=True)
    if scores.ndim not in (1, 2) or scores.shape[-1] == 0:
        raise ValueError(f"scores must be (n,) or (B, n) with n >= 1, got shape {tuple(scores.shape)}")
    from .bon import best_of_n

    n = scores.shape[-1]
    idx = best_of_n(scores.reshape(-1, n), n) % n
    return int(idx[0]) if scores.ndim == 1 else idx


# ---------------------------------------------------------------- accuracy at k from a pool of n
def _check_k(k, n):
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"k must be an int with 1 <= k <= n = {n}, got {k!r}")


def _maj_at_k_one(answers, correct, k: int) -> float:
    _check_answers(answers)
    n = len(answers)
    _check_k(k, n)
    counts: dict = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    n_none = n - sum(counts.values())
    a_star = counts.pop(correct, 0) if correct is not None else 0
    if a_star == 0:
        return 0.0
    others = list(counts.values())
    total = math.comb(n, k)
    acc = 0.0
    # draw t copies of the correct answer (t >= 1); the others must each draw <= t; e of them tie at t
    for t in range(1, min(a_star, k) + 1):
        # ways[s][e]: ways to draw s samples from the other answers so far, e of which drew exactly t
        ways = {(0, 0): 1}
        for a_j in others:
            new: dict = {}
            for (s, e), w in ways.items():
                for x in range(0, min(a_j, t, k - t - s) + 1):
                    key = (s + x, e + (x == t))
                    new[key] = new.get(key, 0) + w * math.comb(a_j, x)
            ways = new
        base = math.comb(a_star, t)
        for (s, e), w in ways.items():
            rest = k - t - s  # the rest are unparsable (None) samples
            if 0 <= rest <= n_none:
                acc += base * w * math.comb(n_none, rest) / (1 + e)
    return acc / total


def maj_at_k(answers, correct, k: int):
    """Expected accuracy of the majority vote over k samples drawn uniformly WITHOUT replacement from
    the n answers of a problem (the unbiased maj@k estimator from a pool of n, like pass@k): exact,
    by counting the multivariate-hypergeometric draws (no enumeration of the C(n, k) subsets).

    answers: a list of n answers (None = unparsable) and correct the right answer -> float;
    or a list of P such lists and a list of P correct answers -> tensor (P,) in float64.
    Tie rule (module docstring): a tie among m answers that contains the correct one counts 1/m; a
    subset with no parsable answer counts 0. maj_at_k(answers, a, n) is the full pool's vote."""
    if isinstance(answers, Sequence) and answers and all(
            isinstance(a, Sequence) and not isinstance(a, (str, bytes)) for a in answers):
        if isinstance(correct, (str, bytes)) or not isinstance(correct, Sequence) or len(correct) != len(answers):
            raise ValueError(f"for P problems, correct must be a list of P answers, got {correct!r}")
        return torch.tensor([_maj_at_k_one(a, c, k) for a, c in zip(answers, correct)], dtype=torch.float64)
    return _maj_at_k_one(answers, correct, k)


def best_of_k(scores: torch.Tensor, correct: torch.Tensor, k: int):
    """Expected correctness of the highest-scored sample among k drawn uniformly WITHOUT replacement
    from n scored samples (unbiased best-of-k from a pool of n). Sort by score; a sample with
    `below` samples scored strictly lower and m - 1 others tied with it is the selected one with
    probability sum_{j=1}^{m} C(m-1, j-1) C(below, k-j) / C(n, k) / j (j of the m tied drawn, ties split
    uniformly, the rule of best_of_n_select over a random order).

    scores: (n,) or (P, n) finite floats; correct: the same shape, 0/1 (bool or numbers).
    Returns a float for (n,), a tensor (P,) in float64 for (P, n)."""
    check_tensor(scores, "scores", floating=True)
    check_tensor(correct, "correct")
    if scores.ndim not in (1, 2) or scores.shape[-1] == 0 or correct.shape != scores.shape:
        raise ValueError(f"scores and correct must share a shape (n,) or (P, n), got {tuple(scores.shape)} "
                         f"and {tuple(correct.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite")
    cor = correct.double()
    if bool(((cor != 0) & (cor != 1)).any()):
        raise ValueError("correct must hold only 0/1 (or True/False)")
    n = scores.shape[-1]
    _check_k(k, n)
    s2, c2 = scores.reshape(-1, n).double(), cor.reshape(-1, n)
    below = (s2[:, None, :] < s2[:, :, None]).sum(-1)  # (P, n): strictly lower scores
    tied = (s2[:, None, :] == s2[:, :, None]).sum(-1)  # (P, n): m, itself included
    total = math.comb(n, k)
    prob = torch.zeros_like(s2)
    for p in range(s2.shape[0]):
        for i in range(n):
            b, m = int(below[p, i]), int(tied[p, i])
            prob[p, i] = sum(math.comb(m - 1, j - 1) * math.comb(b, k - j) / j for j in range(1, min(m, k) + 1)) / total
    out = (prob * c2).sum(-1)
    return float(out[0]) if scores.ndim == 1 else out
