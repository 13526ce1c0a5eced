"""minirl.verifiers: the step checker, sum / min / mean aggregation, the reward contract of every
verifier (bad responses get a defined reward, never an exception), and data/tiny-arith."""
import json
import math

import pytest
import torch

from minirl import models, rewards, verifiers, world
from minirl.paths import DATA_DIR
from minirl.ttc import pass_at_k

NAMES = sorted(verifiers.VERIFIERS)


def test_gold_answer_matches_the_world():
    for p in world.arithmetic_problems(300, seed=4):
        assert verifiers.gold_answer(p["prompt"]) == p["answer"]
        assert rewards.eval_expression(p["prompt"][3:-2]) == p["answer"]
    for bad in ("write a review of the soup:", "Q: 3+=?", "", "Q: 3+4", "3+4=?"):
        with pytest.raises(ValueError, match="arithmetic question"):
            verifiers.gold_answer(bad)
    with pytest.raises(ValueError, match="prompt must be a str"):
        verifiers.gold_answer(None)


def test_world_responses_are_perfect_under_every_verifier():
    probs = world.arithmetic_problems(200, seed=2)
    P, R = [p["prompt"] for p in probs], [p["response"] for p in probs]
    for name in ("outcome", "format", "process_min", "process_mean", "loose"):
        assert verifiers.verify(name, P, R).tolist() == [1.0] * 200, name
    n_steps = torch.tensor([len(p["steps"]) + 1.0 for p in probs])  # written steps + the answer step
    torch.testing.assert_close(verifiers.verify("process_sum", P, R), n_steps)


def test_agrees_with_rewards_module_on_model_like_text():
    probs = world.arithmetic_problems(50, seed=3)
    variants = []
    for p in probs:
        a = p["answer"]
        variants += [(p, p["response"]), (p, p["response"].replace(f"A: {a}", f"A: {a + 1}")),
                     (p, " " + " ".join(f"{s}." for s in p["steps"]) + f" A: {a} extra"),
                     (p, f" 1+1=3. A: {a}"), (p, "")]
    for p, r in variants:
        assert verifiers.outcome_reward(p["prompt"], r) == rewards.exact_match_reward(r, p["answer"])
        assert verifiers.format_reward(p["prompt"], r) == rewards.format_reward(r)
        assert verifiers.loose_reward(p["prompt"], r) == rewards.loose_match_reward(r, p["answer"])


def test_step_checker_per_step():
    steps = verifiers.check_steps(" 3*7=21. 21+17=39. A: 39")
    assert [s.correct for s in steps] == [True, False, True]  # a wrong step, an answer that follows it
    assert [(s.claimed, s.true) for s in steps] == [(21, 21), (39, 38), (39, 39)]
    assert [s.correct for s in verifiers.check_steps(" 3*7=21. 21+17=38. A: 40")] == [True, True, False]
    assert [s.correct for s in verifiers.check_steps(" A: 38")] == [False]  # an answer with no work
    assert verifiers.check_steps("") == [] and verifiers.check_steps("no numbers here") == []
    assert [s.correct for s in verifiers.check_steps(" 2*3+4=10. 5-9=-4.")] == [True, True]  # no answer step
    many = " ".join(["1+1=2."] * 40) + " A: 2"
    assert len(verifiers.check_steps(many)) == verifiers.MAX_STEPS + 1


def test_aggregation_identities_and_limits():
    ok, mask = verifiers.step_table([" 3*7=21. 21+17=39. A: 39", " 3*7=21. A: 21", "", " 1+1=2. 2+2=4. A: 4"])
    assert ok.shape == mask.shape == (4, 3)
    assert verifiers.aggregate_steps(ok, mask, "min").tolist() == [0.0, 1.0, 0.0, 1.0]
    assert verifiers.aggregate_steps(ok, mask, "sum").tolist() == [2.0, 2.0, 0.0, 3.0]
    torch.testing.assert_close(verifiers.aggregate_steps(ok, mask, "mean"), torch.tensor([2 / 3, 1.0, 0.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 5, generator=g, dtype=torch.float64)
    m = torch.rand(6, 5, generator=g) < 0.7
    m[0] = False  # a row with no step
    m[1] = True
    mn, sm, me = (verifiers.aggregate_steps(x, m, r) for r in ("min", "sum", "mean"))
    for i in range(6):
        vals = x[i][m[i]]
        if len(vals) == 0:
            assert mn[i] == sm[i] == me[i] == 0
            continue
        assert mn[i] == vals.min() and torch.isclose(sm[i], vals.sum()) and torch.isclose(me[i], vals.mean())
        assert mn[i] <= me[i] <= vals.max() and torch.isclose(sm[i], me[i] * len(vals))
    # one step: all three agree; the padding value never matters
    one = torch.tensor([[0.3, 99.0]], dtype=torch.float64)
    mk = torch.tensor([[1, 0]])
    assert {float(verifiers.aggregate_steps(one, mk, r)) for r in ("min", "sum", "mean")} == {0.3}


def test_aggregation_gradients_float64():
    g = torch.Generator().manual_seed(1)
    x = (0.05 + 0.9 * torch.rand(3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1]])
    for r in ("min", "sum", "mean"):
        assert torch.autograd.gradcheck(lambda t: verifiers.aggregate_steps(t, m, r), (x,))
    # the min sends all of its gradient to the weakest step
    (grad,) = torch.autograd.grad(verifiers.aggregate_steps(x, m, "min").sum(), x)
    for i in range(3):
        masked = torch.where(m[i] > 0, x[i], torch.tensor(9.0, dtype=torch.float64))
        assert grad[i].nonzero().flatten().tolist() == [int(masked.argmin())]


def test_aggregation_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="reduce must be one of"):
        verifiers.aggregate_steps(x, torch.ones(2, 3), "max")
    with pytest.raises(ValueError, match="step_mask must have shape"):
        verifiers.aggregate_steps(x, torch.ones(2, 2))
    with pytest.raises(ValueError, match="0/1"):
        verifiers.aggregate_steps(x, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="2 dimension"):
        verifiers.aggregate_steps(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="floating"):
        verifiers.aggregate_steps(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="list of str"):
        verifiers.step_table("A: 3")


HOSTILE = [
    "", " ", "A:", "A: ", " A: -", " A: 38.", "A: 3 8", " A: ٣٨", "\n\n\t", "A: 38\n",
    " 3*7=21. 21+17=38. A: " + "9" * 5000,  # Python refuses int() of more than 4300 digits
    " " + "9" * 6000 + "*" + "9" * 6000 + "=1. A: 1",  # a huge product is never computed
    " 3*7=" + "1" * 30 + ". A: 38", "=" * 200, "A: A: A: 38", " -3*7=-21. A: -21", " 3**7=1. A: 38",
    "38", " 38 39 40 41", "\x00A: 38", "A: 0038",
]


@pytest.mark.parametrize("name", NAMES)
def test_contract_defined_reward_never_an_exception(name):
    fn = verifiers.VERIFIERS[name]
    hi = verifiers.MAX_STEPS + 1 if name == "process_sum" else 1
    for r in HOSTILE:
        v = fn("Q: 3*7+17=?", r)
        assert isinstance(v, float) and math.isfinite(v) and 0 <= v <= hi, (name, r)
    big = " 3*7=21. 21+17=38. A: " + "9" * 5000
    with pytest.raises(ValueError):  # the crash the contract rules out
        rewards.parse_answer(big)
    assert fn("Q: 3*7+17=?", big) == {"outcome": 0.0, "format": 1.0, "loose": 1.0}.get(name, fn("Q: 3*7+17=?", big))
    with pytest.raises(ValueError, match="response must be a str"):
        fn("Q: 3*7+17=?", None)
    with pytest.raises(ValueError, match="arithmetic question"):
        fn("write a review of the soup:", " A: 3")


def test_defined_values_of_edge_cases():
    q = "Q: 3*7+17=?"
    assert verifiers.outcome_reward(q, "") == 0.0 and verifiers.loose_reward(q, "") == 0.0
    assert verifiers.outcome_reward(q, "A: 0038") == 1.0  # leading zeros: the same integer (as parse_answer)
    assert verifiers.outcome_reward(q, " A: 38\n") == 1.0 and verifiers.outcome_reward(q, " A: 38.") == 0.0
    assert verifiers.final_answer("A: " + "9" * 5000) is None and verifiers.final_answer("x A: -12 ") == -12
    assert verifiers.loose_reward(q, " 38 39 40 41") == 1.0  # the hole of the loose verifier
    assert verifiers.process_reward(q, " 3*7=21. A: 21") == 1.0  # true steps, wrong answer
    assert verifiers.outcome_reward(q, " 3*7=21. A: 21") == 0.0
    assert verifiers.process_reward(q, "") == verifiers.process_reward(q, "", "sum") == 0.0
    assert verifiers.verify("outcome", ["Q: 2-5=?"], [" 2-5=-3. A: -3"]).tolist() == [1.0]


def test_verify_and_scorer_bad_input():
    with pytest.raises(ValueError, match="verifier must be one of"):
        verifiers.verify("exact", ["Q: 1+1=?"], [" A: 2"])
    with pytest.raises(ValueError, match="verifier must be one of"):
        verifiers.scorer("gold")
    with pytest.raises(ValueError, match="equal lengths"):
        verifiers.verify("outcome", ["Q: 1+1=?"], [" A: 2", " A: 3"])
    with pytest.raises(ValueError, match="list of str"):
        verifiers.verify("outcome", "Q: 1+1=?", [" A: 2"])
    assert verifiers.verify("outcome", [], []).shape == (0,)


def test_scorer_follows_the_samples_contract():
    from minirl.rollout import Samples

    s = Samples(["Q: 1+1=?", "Q: 2*3=?"], [" 1+1=2. A: 2", " 2*3=5. A: 5"], None, torch.tensor([True, True]))
    out = verifiers.scorer("outcome")(s)
    assert out.shape == (2,) and out.dtype == torch.get_default_dtype() and out.tolist() == [1.0, 0.0]
    assert verifiers.scorer("process_mean")(s).tolist() == [1.0, 0.5]


def test_pass_at_k_from_minirl_ttc():
    assert abs(pass_at_k(5, 2, 3) - 0.9) < 1e-12  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0


def test_train_arith_model_bad_input():
    with pytest.raises(ValueError, match="n_steps and batch_size"):
        verifiers.train_arith_model(None, None, n_steps=0)


def test_tiny_arith_recipe_matches_its_recorded_full_run(float64_default):
    """data/tiny-arith is made from data/tiny-sft by ARITH_RECIPE (400 steps, about 3 minutes at
    one thread). One full run, recorded in data/results/ (`python -m minirl.verifiers
    --record-arith-run`), ended within 1e-6 of the shipped weights; this test re-runs its first
    ARITH_CHECK_STEPS steps and checks every loss and the weights' fingerprint against that record
    (lesson 03 checks its own checkpoints the same way), then the shipped checkpoint's samples."""
    from minirl.utils import weights_fingerprint

    rec = json.loads((DATA_DIR / "results" / verifiers.ARITH_LOG).read_text())
    assert rec["recipe"] == {k: list(v) if isinstance(v, tuple) else v for k, v in verifiers.ARITH_RECIPE.items()}
    assert len(rec["loss"]) == verifiers.ARITH_RECIPE["n_steps"] and rec["final_max_abs_diff_vs_shipped"] < 1e-6
    policy, tok = models.load_policy(models.TINY_SFT_DIR)
    # At ONE thread, the thread count of the record and of the shipped copy. Measured: at two
    # threads the weights end 0.07 away after the 400 steps (a likely cause, not isolated: float64
    # noise in near-zero gradients has a random sign, and AdamW's m / sqrt(v) turns it into a step
    # of size lr at the constant learning rate). So the recipe is reproducible at a fixed thread
    # count, not across thread counts. Lesson 14 loads the shipped copy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = rec["check_step"]
        losses = verifiers.train_arith_model(policy, tok, **verifiers.ARITH_RECIPE, max_steps=n)
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == n
    assert max(abs(a - b) for a, b in zip(losses, rec["loss"][:n])) < 1e-6
    assert max(abs(a - b) for a, b in zip(weights_fingerprint(policy), rec["fingerprint"])) < 1e-6
    assert rec["loss"][-1] < 0.5 * rec["loss"][0]  # the full run learned
    shipped, _ = models.load_policy(DATA_DIR / "tiny-arith")
    assert all(p.dtype == torch.float64 for p in shipped.parameters())
    records = verifiers.arith_samples(shipped, tok)
    assert json.loads((DATA_DIR / "tiny-arith" / models.SAMPLES_FILE).read_text()) == records
