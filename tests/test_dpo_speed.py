"""The opt-in speed options of the DPO path (issue 9): each gives what the default gives.

- `lm.masked_sequence_logprobs` (the LM head on the masked positions only) equals
  `sequence_logprobs * mask`, values and gradients, to 1e-10 in float64;
- response_only_head and reference_batch are the same sums computed another way: the same
  scores, losses and gradients as the defaults (float64, 1e-10), and the same training run;
- group_by_length changes which pairs share a step, not which are seen: every pair exactly once
  per epoch, with less padding;
- bad option values raise ValueError; the defaults are off;
- `python -m minirl.bench_trl_dpo --quick` runs and prints the ratio (needs trl).
"""
import copy
import importlib.util
import math

import pytest
import torch

from minirl import dpo, lm, models
from minirl.algos import dpo as algos_dpo

ROWS = [
    {"prompt": "write a review of the soup:", "chosen": " the soup was great and tasty.",
     "rejected": " the soup was cold."},
    {"prompt": "write a review of the cake:", "chosen": " lovely cake.",
     "rejected": " the cake was stale and the waiter was rude, never again."},
    {"prompt": "write a review of the tea:", "chosen": " fine tea, friendly staff.", "rejected": " bland tea."},
    {"prompt": "write a review of the burger:", "chosen": " the burger was juicy, the fries were crisp.",
     "rejected": " dry."},
    {"prompt": "write a review of the pizza:", "chosen": " great pizza.",
     "rejected": " the pizza was cold and the crust was burnt."},
]
TOL = dict(atol=1e-10, rtol=0)


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


def grads(model, loss):
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


# ------------------------------------------------------------------ lm.masked_sequence_logprobs


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_masked_logprobs_equal_sequence_logprobs(tok, float64_default, side, temperature):
    from minirl.tokenizer import encode_prompt_response

    model = tiny(tok)
    model.train()
    b = encode_prompt_response(tok, [r["prompt"] for r in ROWS], [r["rejected"] for r in ROWS], padding_side=side)
    ids, am, rm = b["input_ids"], b["attention_mask"], b["response_mask"]
    full = lm.sequence_logprobs(model, ids, am, temperature) * rm
    fast = lm.masked_sequence_logprobs(model, ids, am, rm, temperature)
    assert fast.dtype == torch.float64 and fast.shape == ids.shape
    torch.testing.assert_close(fast, full, **TOL)
    assert bool((fast[rm == 0] == 0).all())
    w = torch.linspace(0.5, 2.0, ids.shape[0], dtype=torch.float64)  # a loss that weighs rows differently
    for g_full, g_fast in zip(grads(model, ((full.sum(-1) * w) ** 2).sum()),
                              grads(model, ((fast.sum(-1) * w) ** 2).sum())):
        torch.testing.assert_close(g_fast, g_full, **TOL)


def test_masked_logprobs_checks_its_mask(tok):
    model = tiny(tok)
    b = dpo.encode_preferences(tok, ROWS[:2])
    ids, am, rm = b["input_ids"], b["attention_mask"], b["response_mask"]
    with pytest.raises(ValueError, match="shape"):
        lm.masked_sequence_logprobs(model, ids, am, rm[:, :-1])
    with pytest.raises(ValueError):
        lm.masked_sequence_logprobs(model, ids, am, rm * 2)
    with pytest.raises(ValueError, match="temperature"):
        lm.masked_sequence_logprobs(model, ids, am, rm, temperature=0.0)


# ------------------------------------------------------------------ response_only_head, reference_batch


def test_response_only_scores_losses_and_gradients(tok, float64_default):
    model = tiny(tok)
    model.train()
    mb = dpo.encode_preferences(tok, ROWS)
    ref = algos_dpo.Scores(*(torch.full((len(ROWS),), v, dtype=torch.float64) for v in (-20.0, -25.0, -2.0, -2.5)))
    for loss in ("dpo", "simpo", "rrhf"):  # sums and per-token averages
        cfg = algos_dpo.PreferenceConfig(loss=loss)
        slow = algos_dpo._scores(model, mb)
        fast = algos_dpo._scores(model, mb, response_only=True)
        for a, b in zip(slow, fast):
            torch.testing.assert_close(b, a, **TOL)
        l_slow, _ = algos_dpo.family_loss(loss, slow, ref, cfg)
        l_fast, _ = algos_dpo.family_loss(loss, fast, ref, cfg)
        torch.testing.assert_close(l_fast, l_slow, **TOL)
        for g_slow, g_fast in zip(grads(model, l_slow), grads(model, l_fast)):
            torch.testing.assert_close(g_fast, g_slow, **TOL)


@pytest.mark.parametrize("reference_batch", [1, 3, 4, 512])
@pytest.mark.parametrize("response_only", [False, True])
def test_reference_pass_by_length_equals_default(tok, float64_default, reference_batch, response_only):
    model = tiny(tok)
    b = dpo.encode_preferences(tok, ROWS)
    default = dpo._all_logps(model, b)
    got = dpo._all_logps(model, b, chunk=reference_batch, by_length=True, response_only=response_only)
    torch.testing.assert_close(got, default, **TOL)


@pytest.mark.parametrize("options", [{"response_only_head": True}, {"reference_batch": 4},
                                     {"reference_batch": 2, "response_only_head": True}])
def test_train_dpo_with_options_matches_default(tok, float64_default, options):
    rows = ROWS * 2
    base = dict(epochs=2, batch_size=3, log_every=1, lr=1e-3)
    histories = []
    for extra in ({}, options):
        policy, ref = tiny(tok, seed=1), tiny(tok, seed=2)
        histories.append(dpo.train_dpo(policy, ref, tok, rows, dpo.DPOConfig(**base, **extra)))
    assert len(histories[0]) == len(histories[1]) == 1 + 2 * math.ceil(len(rows) / 3)
    for a, b in zip(*histories):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=1e-10, rel=0), k


def test_per_batch_reference_with_response_only_head(tok, float64_default):
    rows = ROWS * 2
    states = []
    for extra in ({}, {"response_only_head": True}):
        cfg = algos_dpo.PreferenceConfig(loss="dpo", steps=3, batch_size=4, **extra)
        policy, ref = tiny(tok, seed=1), tiny(tok, seed=2)
        state = algos_dpo.init_preference(policy, ref, tok, rows, cfg)
        algos_dpo.train_preference(state, cfg)
        states.append(state)
    for a, b in zip(states[0].history, states[1].history):
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=1e-10, rel=0), k


# ------------------------------------------------------------------ group_by_length


def test_group_by_length_visits_every_pair_once_per_epoch(tok):
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"] + " ok." * (i % 7), "rejected": r["rejected"]}
            for i, r in enumerate(ROWS * 25)]  # 125 pairs of many lengths
    cfg = algos_dpo.PreferenceConfig(sampling="epochs", epochs=3, batch_size=4, group_by_length=True,
                                     reference="precompute")
    model = tiny(tok)
    state = algos_dpo.init_preference(model, copy.deepcopy(model), tok, rows, cfg)
    n = len(rows)
    widths = {}
    for grouped in (False, True):
        c = algos_dpo.PreferenceConfig(**{**cfg.__dict__, "group_by_length": grouped})
        full = state.batch["attention_mask"].sum(-1)
        sched = algos_dpo._schedule(n, c, torch.maximum(full[:n], full[n:]))
        assert len(sched) == 3 * math.ceil(n / 4)
        for epoch in range(3):
            seen = torch.cat([idx for e, idx in sched if e == epoch])
            assert sorted(seen.tolist()) == list(range(n))  # every pair exactly once
            assert all(1 <= len(idx) <= 4 for e, idx in sched if e == epoch)
        widths[grouped] = sum(int(torch.maximum(full[idx], full[idx + n]).max()) for _, idx in sched)
    assert len(state.schedule) == len(sched)  # init_preference built the same grouped schedule
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(state.schedule, sched))
    assert widths[True] < widths[False]  # less padding


def test_group_by_length_mega_batches():
    g = torch.Generator().manual_seed(0)
    n, bs = 500, 4  # two mega-batches of 200 pairs and one of 100
    lengths = torch.randint(5, 60, (n,), generator=g)
    order = torch.randperm(n, generator=g)
    batches = algos_dpo._length_grouped(order, lengths, bs, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(batches).tolist()) == list(range(n))
    mega = algos_dpo.LENGTH_GROUP_MULT * bs
    for s in range(0, n, mega):  # each batch lies inside one mega-batch, longest first within it
        members = set(order[s:s + mega].tolist())
        inside = [b for b in batches if set(b.tolist()) <= members]
        assert sum(len(b) for b in inside) == len(members)


# ------------------------------------------------------------------ defaults and bad values


def test_defaults_are_off():
    for cfg in (algos_dpo.PreferenceConfig(), dpo.DPOConfig()):
        assert cfg.group_by_length is False and cfg.reference_batch is None and cfg.response_only_head is False


@pytest.mark.parametrize("bad", [
    {"group_by_length": True},  # sampling="replacement"
    {"group_by_length": 1, "sampling": "epochs"},
    {"reference_batch": 8},  # reference="per_batch"
    {"reference_batch": 0, "reference": "precompute"},
    {"reference_batch": 2.5, "reference": "precompute"},
    {"reference_batch": True, "reference": "precompute"},
    {"response_only_head": "yes"},
])
def test_bad_preference_options_raise(bad):
    with pytest.raises(ValueError):
        algos_dpo.check_config(algos_dpo.PreferenceConfig(**bad))


@pytest.mark.parametrize("bad", [{"group_by_length": None}, {"reference_batch": -1}, {"reference_batch": "32"},
                                 {"response_only_head": 0}])
def test_bad_dpo_options_raise(tok, bad):
    model = tiny(tok)
    with pytest.raises(ValueError):
        dpo.train_dpo(model, copy.deepcopy(model), tok, ROWS, dpo.DPOConfig(**bad))


# ------------------------------------------------------------------ the benchmark


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed: no TRL side to time")
def test_bench_trl_dpo_quick_runs(capsys):
    from minirl import bench_trl_dpo

    res = bench_trl_dpo.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "TRL epoch / minirl epoch = " in out and "load average" in out
    assert res["ratio"] > 0 and res["ratio_options"] > 0
    assert res["check"]["same_tokens"]
    assert res["check"]["diff"] < 1e-5  # float32, same policy, reference and pairs
    for runs in res["results"].values():
        assert runs[0]["n_steps"] == 3  # 24 pairs, 8 per step
