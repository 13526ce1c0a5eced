"""Test-time compute (minirl.ttc): pass@k, maj@k and best-of-k against enumeration of all k-subsets
(ties split uniformly, as the module docstring states), the votes' tie and None rules, bad input."""
import itertools
import math
import random

import pytest
import torch

from minirl import ttc


def enum_pass(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subs = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subs) / len(subs)


def enum_maj(answers, correct, k):
    """Every k-subset; the vote's winners are all answers tied at the top count (None dropped);
    the correct one gets 1/m of a tie among m."""
    subs = list(itertools.combinations(range(len(answers)), k))
    acc = 0.0
    for s in subs:
        counts = {}
        for i in s:
            if answers[i] is not None:
                counts[answers[i]] = counts.get(answers[i], 0) + 1
        if not counts:
            continue
        top = max(counts.values())
        winners = [a for a, v in counts.items() if v == top]
        acc += (correct in winners) / len(winners)
    return acc / len(subs)


def enum_best(scores, correct, k):
    subs = list(itertools.combinations(range(len(scores)), k))
    acc = 0.0
    for s in subs:
        top = max(scores[i] for i in s)
        winners = [i for i in s if scores[i] == top]
        acc += sum(correct[i] for i in winners) / len(winners)
    return acc / len(subs)


def test_pass_at_k_known_value_and_enumeration():
    assert math.isclose(ttc.pass_at_k(5, 2, 3), 0.9, abs_tol=1e-15)
    assert math.isclose(ttc.pass_at_k(5, 2, 3), 1 - math.comb(3, 3) / math.comb(5, 3), abs_tol=1e-15)
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert abs(ttc.pass_at_k(n, c, k) - enum_pass(n, c, k)) < 1e-12, (n, c, k)


def test_pass_at_k_limits_vectorized_and_stable():
    assert ttc.pass_at_k(10, 0, 4) == 0.0 and ttc.pass_at_k(10, 7, 4) == 1.0  # n - c < k
    assert math.isclose(ttc.pass_at_k(10, 3, 1), 0.3, abs_tol=1e-15)  # pass@1 = c / n
    assert ttc.pass_at_k(10, 3, 10) == 1.0
    c = torch.tensor([0, 1, 2, 5, 16])
    v = ttc.pass_at_k(16, c, 4)
    assert v.dtype == torch.float64 and v.shape == (5,)
    torch.testing.assert_close(v, torch.tensor([enum_pass(16, int(ci), 4) for ci in c], dtype=torch.float64))
    # per-problem n, and a list input
    v2 = ttc.pass_at_k([4, 8, 6], [1, 2, 0], 2)
    torch.testing.assert_close(v2, torch.tensor([0.5, 1 - 15 / 28, 0.0], dtype=torch.float64))
    # large n: the product form matches exact big-integer binomials where comb would overflow float
    n, cc, k = 3000, 7, 500
    exact = 1 - math.comb(n - cc, k) / math.comb(n, k)  # Python's int division is exact-rounded
    assert abs(ttc.pass_at_k(n, cc, k) - exact) < 1e-13
    # monotone in k
    ks = [ttc.pass_at_k(20, 3, k) for k in range(1, 21)]
    assert all(a <= b + 1e-15 for a, b in zip(ks, ks[1:]))


def test_pass_at_k_bad_input():
    for args, msg in [((5, 6, 2), "c <= n"), ((5, -1, 2), "c <= n"), ((5, 2, 0), "k <= n"),
                      ((5, 2, 6), "k <= n"), ((5, 2, 2.0), "k must be an int"),
                      ((torch.tensor([4.5]), 1, 1), "whole"), (([5, 5], [1, 2, 3], 1), "matching"),
                      ((True, 0, 1), "bool"), (("5", 1, 1), "int")]:
        with pytest.raises(ValueError, match=msg):
            ttc.pass_at_k(*args)


def test_votes_tie_and_none_rules():
    assert ttc.majority_vote([3, 5, 5, 3, 7]) == 3  # 3 and 5 tie at 2: the first to appear wins
    assert ttc.majority_vote([None, None, 4]) == 4  # None never wins
    assert ttc.majority_vote([None, None]) is None
    assert ttc.majority_vote(["12", "12", "7"]) == "12"
    assert ttc.weighted_majority_vote([3, 5, 5], [0.9, 0.3, 0.3]) == 3
    assert ttc.weighted_majority_vote([3, 5, 5], torch.tensor([0.5, 0.3, 0.3])) == 5
    assert ttc.weighted_majority_vote([3, 5], [0.5, 0.5]) == 3
    assert ttc.weighted_majority_vote([None, 5], [10.0, 0.1]) == 5
    assert ttc.weighted_majority_vote([1, 1, 2], [1, 1, 1]) == ttc.majority_vote([1, 1, 2])
    for bad in ([], "123", 5):
        with pytest.raises(ValueError, match="answers"):
            ttc.majority_vote(bad)
    with pytest.raises(ValueError, match="hashable"):
        ttc.majority_vote([[1], [1]])
    with pytest.raises(ValueError, match="length"):
        ttc.weighted_majority_vote([1, 2], [1.0])
    for w in ([1.0, -0.1], [1.0, float("nan")], [1.0, float("inf")], [True, 1.0]):
        with pytest.raises(ValueError, match="non-negative"):
            ttc.weighted_majority_vote([1, 2], w)


def test_best_of_n_select():
    assert ttc.best_of_n_select(torch.tensor([0.1, 0.9, 0.9, 0.2])) == 1  # first of tied maxima
    idx = ttc.best_of_n_select(torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 2.0]]))
    assert idx.tolist() == [1, 0]
    with pytest.raises(ValueError, match="finite"):
        ttc.best_of_n_select(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="shape"):
        ttc.best_of_n_select(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="floating"):
        ttc.best_of_n_select(torch.tensor([1, 2]))


def test_maj_at_k_matches_enumeration():
    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(1, 9)
        answers = [rng.choice([None, 1, 2, 3, 4]) for _ in range(n)]
        correct = rng.choice([1, 2, 5])
        for k in range(1, n + 1):
            got = ttc.maj_at_k(answers, correct, k)
            assert abs(got - enum_maj(answers, correct, k)) < 1e-12, (answers, correct, k)


def test_maj_at_k_limits_and_batches():
    answers = [7, 7, 3, None, 7, 2]
    # k = 1: the fraction of correct answers (pass@1)
    assert math.isclose(ttc.maj_at_k(answers, 7, 1), 0.5)
    # k = n: the whole pool's vote
    assert ttc.maj_at_k(answers, 7, 6) == 1.0 and ttc.maj_at_k(answers, 3, 6) == 0.0
    assert ttc.maj_at_k([1, 2], 1, 2) == 0.5  # a two-way tie splits
    assert ttc.maj_at_k([None, None], None, 1) == 0.0  # no parsable answer is never right
    assert ttc.maj_at_k(answers, 99, 3) == 0.0
    v = ttc.maj_at_k([answers, [1, 1, 2]], [7, 2], 2)
    assert v.dtype == torch.float64
    torch.testing.assert_close(v, torch.tensor([enum_maj(answers, 7, 2), enum_maj([1, 1, 2], 2, 2)],
                                               dtype=torch.float64))
    # maj@k <= pass@k always
    for k in range(1, 7):
        c = sum(a == 7 for a in answers)
        assert ttc.maj_at_k(answers, 7, k) <= ttc.pass_at_k(6, c, k) + 1e-12
    with pytest.raises(ValueError, match="k must be"):
        ttc.maj_at_k(answers, 7, 7)
    with pytest.raises(ValueError, match="correct must be a list"):
        ttc.maj_at_k([answers, answers], 7, 2)


def test_best_of_k_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = int(torch.randint(1, 8, (1,), generator=g))
        scores = torch.randint(0, 4, (n,), generator=g).double()  # many ties
        correct = torch.randint(0, 2, (n,), generator=g)
        for k in range(1, n + 1):
            got = ttc.best_of_k(scores, correct, k)
            want = enum_best(scores.tolist(), correct.tolist(), k)
            assert abs(got - want) < 1e-12, (scores, correct, k)
    s = torch.tensor([[0.3, 0.1, 0.9], [0.5, 0.5, 0.5]])
    c = torch.tensor([[1, 0, 0], [1, 0, 0]])
    v = ttc.best_of_k(s, c, 1)
    torch.testing.assert_close(v, torch.tensor([1 / 3, 1 / 3], dtype=torch.float64))  # k=1: pass@1
    torch.testing.assert_close(ttc.best_of_k(s, c, 3), torch.tensor([0.0, 1 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="share a shape"):
        ttc.best_of_k(s, c[:, :2], 1)
    with pytest.raises(ValueError, match="0/1"):
        ttc.best_of_k(s, c * 2, 1)
    with pytest.raises(ValueError, match="k must be"):
        ttc.best_of_k(s, c, 4)
