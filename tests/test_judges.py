"""Tests of minirl.judges: verdict parsing and its counters, bias measurements on constructed
judges with known answers, the language-model judge's identities, Constitutional AI's critique and
revision, and CGPO's calibrated reward, AND of judges and constrained filters."""
import math
from collections import Counter

import pytest
import torch

from minirl import judges as J
from minirl.models import TINY_SFT_DIR, load_policy


# ------------------------------------------------------------------ statistics and measurements


def test_mean_se_matches_definition_and_rejects_short_input():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    m, se = J.mean_se(x)
    assert m == pytest.approx(3.5)
    assert se == pytest.approx(float(x.std()) / 2)
    assert J.mean_se(torch.tensor([True, False, True, True]))[0] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        J.mean_se(torch.tensor([1.0]))
    with pytest.raises(ValueError):
        J.mean_se(torch.ones(2, 2))


def test_agreement_limits():
    g = torch.Generator().manual_seed(0)
    gold = torch.rand(200, generator=g) < 0.5
    assert J.agreement(gold, gold) == (1.0, 0.0)
    assert J.agreement(~gold, gold) == (0.0, 0.0)
    with pytest.raises(ValueError):
        J.agreement(gold.double(), gold)
    with pytest.raises(ValueError):
        J.agreement(gold[:10], gold)


def test_position_bias_of_order_blind_and_always_first_judges():
    g = torch.Generator().manual_seed(1)
    a_wins = torch.rand(100, generator=g) < 0.5
    blind = J.position_bias(a_wins, ~a_wins)  # an order-blind judge: picks a in both orders or b in both
    assert blind["bias"] == 0.0 and blind["bias_se"] == 0.0 and blind["consistency"] == 1.0
    first = J.position_bias(torch.ones(100, dtype=torch.bool), torch.ones(100, dtype=torch.bool))
    assert first["bias"] == 0.5 and first["consistency"] == 0.0
    second = J.position_bias(torch.zeros(100, dtype=torch.bool), torch.zeros(100, dtype=torch.bool))
    assert second["bias"] == -0.5


def test_position_bias_se_is_over_pairs():
    ab = torch.tensor([True, True, False, True, False, True])
    ba = torch.tensor([True, False, False, True, True, True])
    per_pair = (ab.double() + ba.double()) / 2 - 0.5
    out = J.position_bias(ab, ba)
    assert out["bias"] == pytest.approx(float(per_pair.mean()))
    assert out["bias_se"] == pytest.approx(float(per_pair.std() / math.sqrt(6)))


def test_excess_preference_is_zero_for_a_judge_that_copies_the_gold():
    g = torch.Generator().manual_seed(2)
    gold_longer = torch.rand(300, generator=g) < 0.3  # the gold itself has a taste for length
    assert J.excess_preference(gold_longer, gold_longer) == (0.0, 0.0)
    always_longer = torch.ones(300, dtype=torch.bool)
    m, _ = J.excess_preference(always_longer, gold_longer)
    assert m == pytest.approx(1 - float(gold_longer.double().mean()))


# ------------------------------------------------------------------ verdicts and labels


@pytest.mark.parametrize("text,verdict", [
    ("A", "first"), ("[[A]]", "first"), ("(a)", "first"), ("Response A is better.", "first"),
    ("The first one", "first"), ("B", "second"), ("[[B]]", "second"), ("output b", "second"),
    (" b. ", "second"), ("tie", "tie"), ("They are equal", "tie"), ("neither", "tie"),
    ("I cannot judge this pair", "refusal"), ("Sorry, as an AI I won't", "refusal"),
    ("both A and B", "unparsable"), ("", "unparsable"), ("banana", "unparsable"), (None, "unparsable"),
    (3, "unparsable"),
])
def test_parse_verdict(text, verdict):
    assert J.parse_verdict(text) == verdict


def test_verdicts_from_margin_ties_and_nan():
    m = torch.tensor([0.3, -0.3, 0.05, 0.0, math.nan], dtype=torch.float64)
    raw = J.verdicts_from_margin(m, tie_margin=0.1)
    assert [J.parse_verdict(r) for r in raw] == ["first", "second", "tie", "tie", "refusal"]
    assert [J.parse_verdict(r) for r in J.verdicts_from_margin(m[:4])] == ["first", "second", "first", "tie"]
    with pytest.raises(ValueError):
        J.verdicts_from_margin(m, tie_margin=-1.0)


def _prompts(n):
    return ["write a positive review of the soup:"] * n


def test_label_pairs_drops_and_counts_every_bad_verdict():
    answers = ["A", "B", "tie", "I cannot judge", "hmm", "[[A]]"]

    def judge(prompts, firsts, seconds):
        return answers[: len(prompts)]

    firsts, seconds = [f" a{i}" for i in range(6)], [f" b{i}" for i in range(6)]
    rows, counts = J.label_pairs(judge, _prompts(6), firsts, seconds)
    assert counts == Counter(labeled=3, tie=1, refusal=1, unparsable=1)
    assert [(r["chosen"], r["rejected"], r["pair_index"]) for r in rows] == [
        (" a0", " b0", 0), (" b1", " a1", 1), (" a5", " b5", 5)]
    rows2, counts2 = J.label_pairs(judge, _prompts(6), firsts, seconds, counts=counts)
    assert counts2 is counts and counts["labeled"] == 6


def test_label_pairs_both_orders_keeps_only_consistent_verdicts():
    def always_first(prompts, firsts, seconds):
        return ["A"] * len(prompts)

    rows, counts = J.label_pairs(always_first, _prompts(4), [" x"] * 4, [" y"] * 4, both_orders=True)
    assert rows == [] and counts == Counter(inconsistent=4)

    def longer(prompts, firsts, seconds):  # order-blind
        return ["A" if len(a) > len(b) else "B" for a, b in zip(firsts, seconds)]

    rows, counts = J.label_pairs(longer, _prompts(2), [" long one", " s"], [" s", " long one"], both_orders=True)
    assert counts == Counter(labeled=2) and all(r["chosen"] == " long one" for r in rows)


def test_label_pairs_bad_input():
    with pytest.raises(ValueError):
        J.label_pairs(lambda p, a, b: ["A"], _prompts(2), [" a", " b"], [" c", " d"])  # one answer short
    with pytest.raises(ValueError):
        J.label_pairs(lambda p, a, b: ["A"], "write", [" a"], [" b"])
    with pytest.raises(ValueError):
        J.labels_from_verdicts(_prompts(1), [" a"], [" b"], ["A"])  # raw text, not a parsed verdict


# ------------------------------------------------------------------ the language-model judge


@pytest.fixture(scope="module")
def sft():
    torch.set_default_dtype(torch.float64)
    model, tok = load_policy(TINY_SFT_DIR)
    yield model, tok
    torch.set_default_dtype(torch.float32)


def test_instruction_contrast_is_a_difference_of_log_likelihoods(sft):
    from minirl.lm import sequence_logprobs, sequence_sum
    from minirl.tokenizer import encode_prompt_response

    model, tok = sft
    prompts = ["write a review of the soup:", "write a positive review of the cake:"]
    ys = [" the soup was bland.", " the cake was delicious."]
    s = J.instruction_contrast(model, tok, prompts, ys)

    def ll(instr):
        enc = encode_prompt_response(tok, instr, ys, add_eos=False)
        with torch.no_grad():
            return sequence_sum(sequence_logprobs(model, enc["input_ids"], enc["attention_mask"]), enc["response_mask"])

    ref = ll(["write a positive review of the soup:", "write a positive review of the cake:"]) - \
        ll(["write a negative review of the soup:", "write a negative review of the cake:"])
    torch.testing.assert_close(s, ref)
    assert s[1] > 0 > s[0]  # the tiny model reads "delicious" as positive, "bland" as negative


def test_pair_contrast_first_part_equals_pointwise_and_judges_agree_when_order_blind(sft):
    model, tok = sft
    prompts = _prompts(3)
    a = [" the soup was great.", " the soup was cold.", " the soup was fine."]
    b = [" the soup was awful.", " the soup was lovely and fresh.", " the soup was fine."]
    s1, s2 = J.pair_contrast(model, tok, prompts, a, b)
    torch.testing.assert_close(s1, J.instruction_contrast(model, tok, prompts, a))
    point = J.make_lm_judge(model, tok, in_context=False)
    v_ab = [J.parse_verdict(v) for v in point(prompts, a, b)]
    v_ba = [J.parse_verdict(v) for v in point(prompts, b, a)]
    assert v_ab[:2] == ["first", "second"] and v_ba[:2] == ["second", "first"] and v_ab[2] == v_ba[2] == "tie"
    in_ctx = J.make_lm_judge(model, tok)
    assert J.parse_verdict(in_ctx(prompts[:1], [" the soup was great."], [""])[0]) == "refusal"


def test_dish_of():
    assert J.dish_of("write a positive review of the noodles:") == "noodles"
    with pytest.raises(ValueError):
        J.dish_of("Q: 2+3=?")


# ------------------------------------------------------------------ constitutional AI


def test_critique_and_revision_follow_the_constitution():
    p = "write a positive review of the soup:"
    good = " the soup was delicious. the staff was friendly."
    assert J.critique(p, good) == []
    assert J.revise(p, good, []) == good
    bad = " the soup was great! the soup was great! the pizza was lovely. the waiter was rude."
    crit = J.critique(p, bad)
    kinds = Counter(k for k, _ in crit)
    assert kinds["no_repetition"] == 2 and kinds["on_dish"] == 1 and kinds["faithful"] == 1
    rev = J.revise(p, bad, crit)
    assert rev == " the soup was great. the soup was lovely. the soup was good."
    assert J.critique(p, rev) == []
    off = J.revise("write a positive review of the tacos:", " the staff was friendly.", [("on_dish", "")])
    assert off == " the tacos were good. the staff was friendly."


def test_the_critic_has_the_lexicons_blind_spots():
    p = "write a positive review of the soup:"
    # VADER does not know "soggy", and reads a counterfactual as positive: the critic lets them pass
    assert J.critique(p, " the soup was soggy.") == []
    assert J.critique(p, " i hoped the soup would be great, but it was cold.") == []


# ------------------------------------------------------------------ constraint judges and CGPO


def test_constraint_judges_and_their_and():
    prompts = ["write a positive review of the soup:"] * 4
    ys = [" the soup was lovely and fresh. the staff was friendly.",  # passes all
          " the pizza was lovely and fresh. the staff was friendly.",  # another dish
          " the soup was great. the soup was great. the soup was great.",  # repeated
          " the soup was good."]  # too short
    judges = {"on_dish": J.on_dish_judge, "no_repetition": J.no_repetition_judge, "length": J.length_judge()}
    passed, each = J.all_pass(judges, prompts, ys)
    assert passed.tolist() == [True, False, False, False]
    assert each["on_dish"].tolist() == [True, False, True, True]
    assert each["no_repetition"].tolist() == [True, True, False, True]
    assert each["length"].tolist() == [True, True, True, False]
    assert bool((passed == (each["on_dish"] & each["no_repetition"] & each["length"])).all())
    assert J.all_pass({}, prompts, ys)[0].all()
    with pytest.raises(ValueError):
        J.all_pass({"bad": lambda p, y: torch.ones(len(y))}, prompts, ys)  # not bool
    with pytest.raises(ValueError):
        J.length_judge(0, 5)
    with pytest.raises(ValueError):
        J.on_dish_judge(prompts, ys[:2])


def test_calibrated_reward_identities_and_gradient():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(16, generator=g, dtype=torch.float64)
    base = torch.randn(16, generator=g, dtype=torch.float64)
    c = J.calibrated_reward(r, base)
    torch.testing.assert_close(c, 1 / (1 + torch.exp(-(r - base))))
    torch.testing.assert_close(J.calibrated_reward(r + 5.0, base + 5.0), c)  # a per-prompt offset cancels
    torch.testing.assert_close(J.calibrated_reward(base, base), torch.full_like(c, 0.5))
    torch.testing.assert_close(c + J.calibrated_reward(base, r), torch.ones_like(c))  # Bradley-Terry symmetry
    assert torch.autograd.gradcheck(lambda x: J.calibrated_reward(x, base), (r.clone().requires_grad_(),))
    with pytest.raises(ValueError):
        J.calibrated_reward(r, base[:3])


def test_constrained_rewards_and_best():
    r = torch.tensor([0.9, 0.2, 0.7, 0.4, 0.1, 0.3, 0.8, 0.6], dtype=torch.float64)
    passed = torch.tensor([False, True, True, True, False, False, False, False])
    torch.testing.assert_close(J.constrained_rewards(r, passed),
                               torch.tensor([0.0, 0.2, 0.7, 0.4, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(J.constrained_rewards(r, torch.ones(8, dtype=torch.bool)), r)
    assert J.constrained_rewards(r, passed, floor=-1.0)[0] == -1.0
    assert J.constrained_best(r, passed, 4).tolist() == [2, -1]  # the best passing one; none in group 2
    assert J.constrained_best(r, torch.ones(8, dtype=torch.bool), 4).tolist() == [0, 6]
    with pytest.raises(ValueError):
        J.constrained_best(r, passed, 3)
    with pytest.raises(ValueError):
        J.constrained_rewards(r, passed.double())
