"""minirl.labeling: rank-and-pair with any scorer. label_pairs with the gold as the scorer gives
preference_pairs' rows, lesson 12's RM labeler (preference_pairs per prompt with a lookup table,
keys renamed) is label_pairs with a batched scorer, variable K per prompt, ties, noise, the
re-exports from reward_model, and bad input; the pairwise-judge labeling (verdicts, counters) moved here
from minirl.judges, and its agreement with rank-and-pair."""
from collections import Counter

import pytest
import torch

from minirl import labeling
from minirl import reward_model as RM

PROMPTS = ["write a review of the soup:", "write a review of the cake:", "write a review of the tea:"]
RESPONSES = [
    [" the soup was great.", " the soup was awful.", " the soup was fine.", " the soup was cold."],
    [" the cake was lovely.", " the cake was bland.", " the cake was lovely and sweet.", " it was a cake."],
    [" the tea was hot.", " the tea was bitter.", " the tea was wonderful.", " the tea was tea."],
]


def batched(fn):
    return lambda ps, ys: torch.tensor([fn(p, y) for p, y in zip(ps, ys)], dtype=torch.float64)


def test_reward_model_reexports_the_same_objects():
    for name in ("noisy_ranking", "preference_pairs", "save_pairs", "load_pairs", "gold_response_sentiment",
                 "label_pairs"):
        assert getattr(RM, name) is getattr(labeling, name), name


def test_label_pairs_with_the_gold_is_preference_pairs():
    gold = labeling.gold_response_sentiment
    old = labeling.preference_pairs(PROMPTS, RESPONSES, gold_fn=gold)
    new = labeling.label_pairs(PROMPTS, RESPONSES, batched(gold), score_key="gold")
    assert new == old and len(new) > 0
    noisy_old = labeling.preference_pairs(PROMPTS, RESPONSES, gold_fn=gold, temperature=0.5,
                                          generator=torch.Generator().manual_seed(3))
    noisy_new = labeling.label_pairs(PROMPTS, RESPONSES, batched(gold), score_key="gold", temperature=0.5,
                                     generator=torch.Generator().manual_seed(3))
    # one (1, K) draw per prompt instead of one (N, K) draw: the same law, other draws; same pair count
    assert {(r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in noisy_new} == \
        {(r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in noisy_old}


def _lesson12_rm_label(prompts, responses, score_fn, gold_fn):
    """Lesson 12's inline RM labeler, as written there (with a batched score_fn for the RM)."""
    flat_p = [p for p, ys in zip(prompts, responses) for _ in ys]
    flat_y = [y for ys in responses for y in ys]
    score = dict(zip(zip(flat_p, flat_y), score_fn(flat_p, flat_y).tolist()))
    rows = [r for p, ys in zip(prompts, responses) if len(ys) >= 2
            for r in RM.preference_pairs([p], [ys], gold_fn=lambda p, y: score[(p, y)])]
    for r in rows:
        r["rm_chosen"], r["rm_rejected"] = r.pop("gold_chosen"), r.pop("gold_rejected")
        r["gold_chosen"], r["gold_rejected"] = gold_fn(r["prompt"], r["chosen"]), gold_fn(r["prompt"], r["rejected"])
    return rows


def test_label_pairs_reproduces_lesson_12s_rm_labeler_with_variable_k():
    responses = [RESPONSES[0][:3], RESPONSES[1][:1], RESPONSES[2]]  # K = 3, 1 (skipped), 4
    rm = batched(lambda p, y: float(len(y) % 5) - 0.1 * y.count("a"))  # a stand-in reward model, with ties
    gold = labeling.gold_response_sentiment
    old = _lesson12_rm_label(PROMPTS, responses, rm, gold)
    new = labeling.label_pairs(PROMPTS, responses, rm, score_key="rm", measure=gold)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "prompt_index"} for r in rows]
    assert strip(new) == strip(old) and len(new) > 0
    assert {r["prompt_index"] for r in new} <= {0, 2}  # the index into prompts (lesson 12's is always 0)
    assert all(r["rm_chosen"] > r["rm_rejected"] for r in new)  # ties dropped, best first


def test_flips_and_ties():
    const = batched(lambda p, y: 1.0)
    assert labeling.label_pairs(PROMPTS, RESPONSES, const) == []  # all tied
    assert len(labeling.label_pairs(PROMPTS, RESPONSES, const, drop_ties=False)) == 3 * 6
    by_len = batched(lambda p, y: float(len(y)))
    clean = labeling.label_pairs(PROMPTS, RESPONSES, by_len, drop_ties=False)
    g = torch.Generator().manual_seed(0)
    flipped = labeling.label_pairs(PROMPTS, RESPONSES, by_len, drop_ties=False, flip_rate=0.5, generator=g)
    n_flipped = sum(a["chosen"] != b["chosen"] for a, b in zip(clean, flipped))
    assert 0 < n_flipped < len(clean)


def test_bad_input_raises_value_errors():
    s = batched(lambda p, y: 0.0)
    with pytest.raises(ValueError, match="list of str"):
        labeling.label_pairs("write a review:", [[" a", " b"]], s)
    with pytest.raises(ValueError, match="one list of responses per prompt"):
        labeling.label_pairs(PROMPTS, RESPONSES[:2], s)
    with pytest.raises(ValueError, match="LIST of response strings"):
        labeling.label_pairs(PROMPTS[:1], [" a b"], s)
    with pytest.raises(ValueError, match="callable"):
        labeling.label_pairs(PROMPTS, RESPONSES, "gold")
    with pytest.raises(ValueError, match="one score per response"):
        labeling.label_pairs(PROMPTS, RESPONSES, lambda ps, ys: torch.zeros(3))
    with pytest.raises(ValueError, match="flip_rate"):
        labeling.label_pairs(PROMPTS, RESPONSES, s, flip_rate=0.7)
    with pytest.raises(ValueError, match="must differ"):
        labeling.label_pairs(PROMPTS, RESPONSES, s, score_key="gold", measure=labeling.gold_response_sentiment)


# ------------------------------------------------------------------ pairwise judges (moved from minirl.judges)


def test_judges_reexports_the_pairwise_labeling_objects():
    from minirl import judges

    for name in ("VERDICTS", "parse_verdict", "judge_verdicts", "labels_from_verdicts"):
        assert getattr(judges, name) is getattr(labeling, name), name
    assert judges.label_pairs is labeling.judge_label_pairs


def _score_judge(score):
    """An order-blind pairwise judge answering from a per-response score, as the lesson's
    pointwise judge does: "A", "B" or "tie" by the sign of score(first) - score(second)."""
    from minirl.judges import verdicts_from_margin

    def judge(prompts, firsts, seconds):
        return verdicts_from_margin(score(prompts, firsts) - score(prompts, seconds))
    return judge


@pytest.mark.parametrize("both_orders", [False, True])
def test_pairwise_judge_path_agrees_with_rank_and_pair(both_orders):
    # the same labels either way: a pairwise judge that compares two scores, through
    # judge_label_pairs, and rank-and-pair label_pairs with that score as the scorer (K = 2)
    g = torch.Generator().manual_seed(0)
    n = 40
    prompts = [PROMPTS[i % 3] for i in range(n)]
    firsts, seconds = [f" a{i}" for i in range(n)], [f" b{i}" for i in range(n)]
    table = {y: float(torch.randint(0, 5, (), generator=g)) for y in firsts + seconds}  # ties too
    score = lambda ps, ys: torch.tensor([table[y] for y in ys], dtype=torch.float64)
    rows, counts = labeling.judge_label_pairs(_score_judge(score), prompts, firsts, seconds,
                                              both_orders=both_orders)
    ranked = labeling.label_pairs(prompts, [[a, b] for a, b in zip(firsts, seconds)], score)
    key = lambda r: (r["prompt"], r["chosen"], r["rejected"])
    assert [key(r) for r in rows] == [key(r) for r in ranked]
    assert [r["pair_index"] for r in rows] == [r["prompt_index"] for r in ranked]
    n_ties = sum(table[a] == table[b] for a, b in zip(firsts, seconds))
    assert 0 < n_ties < n and counts == Counter(labeled=n - n_ties, tie=n_ties)


def test_judge_label_pairs_is_judge_verdicts_then_labels_from_verdicts():
    # the moved code keeps its shape: parse every answer, then drop and count the bad ones
    answers = ["A", "B", "tie", "I cannot judge", "hmm", "[[A]]", "second", "both A and B"]
    judge = lambda ps, a, b: answers[: len(ps)]
    prompts = ["write a positive review of the soup:"] * 8
    firsts, seconds = [f" a{i}" for i in range(8)], [f" b{i}" for i in range(8)]
    rows, counts = labeling.judge_label_pairs(judge, prompts, firsts, seconds)
    verdicts = [labeling.parse_verdict(a) for a in answers]
    assert labeling.judge_verdicts(judge, prompts, firsts, seconds) == verdicts
    assert (rows, counts) == labeling.labels_from_verdicts(prompts, firsts, seconds, verdicts)
    assert counts == Counter(labeled=4, tie=1, refusal=1, unparsable=2)
    assert [(r["chosen"], r["pair_index"]) for r in rows] == [(" a0", 0), (" b1", 1), (" a5", 5), (" b6", 6)]
