"""DPO on sequences (minirl.dpo): the concatenated forward against separate forwards and teacher
forcing, the gradient weight against autograd, the limit cases at pi = pi_ref, a short training
run, held-out implicit rewards, and the reward-KL measurement."""
import copy
import math

import pytest
import torch

from minirl import dpo, models, rlhf
from minirl.losses import dpo_loss
from minirl.kl import categorical_kl
from minirl.lm import left_pad, position_ids_from_mask, sequence_logprobs

ROWS = [
    {"prompt": "write a review of the soup:", "chosen": " the soup was great and tasty.",
     "rejected": " the soup was cold.", "gold_chosen": 1.0, "gold_rejected": -0.5},
    {"prompt": "write a review of the cake:", "chosen": " lovely cake.",
     "rejected": " the cake was stale and the waiter was rude, never again.", "gold_chosen": 0.8, "gold_rejected": -0.9},
    {"prompt": "write a review of the tea:", "chosen": " fine tea, friendly staff.",
     "rejected": " bland tea.", "gold_chosen": -0.2, "gold_rejected": 0.3},  # a label against the gold
]



def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=32, n_head=2)


def test_encode_layout(tok):
    b = dpo.encode_preferences(tok, ROWS)
    assert b["input_ids"].shape[0] == 2 * len(ROWS)
    # row i is prompt + chosen, row B + i prompt + rejected; the response mask covers the response + EOS only
    for i, r in enumerate(ROWS):
        for j, key in ((i, "chosen"), (i + len(ROWS), "rejected")):
            ids = b["input_ids"][j][b["response_mask"][j].bool()].tolist()
            assert ids[-1] == tok.eos_token_id
            assert tok.decode(ids[:-1]) == r[key]
    assert not bool((b["response_mask"].bool() & ~b["attention_mask"].bool()).any())


def test_concatenated_logps_match_teacher_forcing_row_by_row(tok):
    model = tiny(tok)
    b = dpo.encode_preferences(tok, ROWS)
    chosen, rejected = dpo.concatenated_logps(model, b)
    B = len(ROWS)
    for j in range(2 * B):
        n = int(b["attention_mask"][j].sum())  # right padding: the real tokens come first
        ids, rm = b["input_ids"][j:j + 1, :n], b["response_mask"][j:j + 1, :n]
        lp = sequence_logprobs(model, ids, torch.ones_like(ids))  # one unpadded row alone
        expected = (lp * rm).sum()
        got = chosen[j] if j < B else rejected[j - B]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the prompt is not counted: a different prompt token changes nothing but the conditioning
    assert chosen.shape == rejected.shape == (B,)
    assert bool((chosen < 0).all()) and bool((rejected < 0).all())


def test_gradient_weight_against_autograd():
    g = torch.Generator().manual_seed(0)
    B, beta = 7, 0.3
    pol = (torch.randn(2, B, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    ref = torch.randn(2, B, generator=g, dtype=torch.float64) * 3
    loss, stats = dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=beta)
    loss.backward()
    w = dpo.dpo_gradient_weights(stats["chosen_rewards"], stats["rejected_rewards"])
    torch.testing.assert_close(pol.grad[0], -beta * w / B, atol=1e-12, rtol=0)
    torch.testing.assert_close(pol.grad[1], beta * w / B, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        dpo.dpo_gradient_weights(torch.zeros(3), torch.zeros(4))


def test_at_the_reference_loss_is_log2_and_rewards_vanish(tok):
    policy = tiny(tok)
    ref = copy.deepcopy(policy)
    out = dpo.implicit_rewards(policy, ref, tok, ROWS, beta=0.1)
    assert float(out["chosen_rewards"].abs().max()) == 0.0 and float(out["rejected_rewards"].abs().max()) == 0.0
    assert out["accuracy"] == 0.5 and out["gold_accuracy"] == 0.5  # ties count 1/2
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    b = dpo.encode_preferences(tok, ROWS)
    ref_c, ref_r = dpo.concatenated_logps(ref, b)
    stats = dpo.dpo_step(policy, opt, b, ref_c.detach(), ref_r.detach(), dpo.DPOConfig())
    assert stats["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert stats["grad_weight"] == pytest.approx(0.5, abs=1e-6)


def test_training_raises_the_margin_and_leaves_the_reference(tok):
    policy = tiny(tok)
    ref = copy.deepcopy(policy).requires_grad_(False)
    before = [p.clone() for p in ref.parameters()]
    cfg = dpo.DPOConfig(beta=0.5, lr=1e-2, epochs=8, batch_size=2, log_every=4)
    hist = dpo.train_dpo(policy, ref, tok, ROWS, cfg, eval_rows=ROWS)
    assert hist[0]["step"] == 0 and hist[0]["eval_accuracy"] == 0.5
    assert hist[-1]["step"] == 16  # 8 epochs x ceil(3 / 2) steps
    assert hist[-1]["loss"] < hist[1]["loss"] < math.log(2) + 0.05
    assert hist[-1]["eval_margin"] > 0.5 and hist[-1]["eval_accuracy"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, ref.parameters()))
    out = dpo.implicit_rewards(policy, ref, tok, ROWS, beta=0.5)
    assert out["gold_accuracy"] == pytest.approx(2 / 3)  # the third label goes against the gold
    # the implicit rewards are beta times the log-ratio of the stored log-probs
    b = dpo.encode_preferences(tok, ROWS)
    with torch.no_grad():
        c, r = dpo.concatenated_logps(ref, b)
    torch.testing.assert_close(out["chosen_rewards"], 0.5 * (out["chosen_logps"] - c))
    torch.testing.assert_close(out["rejected_rewards"], 0.5 * (out["rejected_logps"] - r))


def test_same_seed_same_run(tok):
    runs = []
    for _ in range(2):
        policy = tiny(tok)
        ref = copy.deepcopy(policy)
        runs.append(dpo.train_dpo(policy, ref, tok, ROWS, dpo.DPOConfig(epochs=2, batch_size=2, log_every=1)))
    assert runs[0] == runs[1]


def test_callback_sees_every_step_and_changes_nothing(tok):
    """train_dpo(callback=...) is called after each step; sampling in it leaves the run unchanged."""
    cfg = dpo.DPOConfig(epochs=2, batch_size=2, log_every=1)
    policy_a, policy_b = tiny(tok), tiny(tok)
    ref = copy.deepcopy(policy_a).requires_grad_(False)
    hist_a = dpo.train_dpo(policy_a, ref, tok, ROWS, cfg)
    seen = []

    def callback(step, pol):
        seen.append(step)
        rlhf.sample(pol, tok, [ROWS[0]["prompt"]], 4, 1.0, torch.Generator().manual_seed(step))  # sets eval mode

    hist_b = dpo.train_dpo(policy_b, ref, tok, ROWS, cfg, callback=callback)
    assert seen == [1, 2, 3, 4] and hist_a == hist_b
    assert all(torch.equal(a, b) for a, b in zip(policy_a.parameters(), policy_b.parameters()))


def test_evaluate_samples_at_the_reference_has_zero_kl(tok):
    policy = tiny(tok)
    ref = copy.deepcopy(policy)
    prompts = [r["prompt"] for r in ROWS] * 4
    out = dpo.evaluate_samples(policy, ref, tok, prompts, lambda p, y: float(len(y)), max_new_tokens=8,
                               generator=torch.Generator().manual_seed(0))
    assert abs(out["kl"]) < 1e-4 and out["kl_sem"] < 1e-4  # k1 of identical models: 0 up to round-off
    assert 1 <= out["length"] <= 8 and out["gold"] > 0 and out["logp"] < 0
    # a response is truncated when it has no EOS; it then fills all max_new_tokens columns
    assert 0.0 <= out["truncated"] <= 1.0
    one = dpo.evaluate_samples(policy, ref, tok, prompts, lambda p, y: 0.0, max_new_tokens=1,
                               generator=torch.Generator().manual_seed(0))
    s = rlhf.sample(policy, tok, prompts, 1, generator=torch.Generator().manual_seed(0))
    assert one["truncated"] == float((s.response_ids[:, 0] != tok.eos_token_id).double().mean())
    # one-token responses: the k1 mean must agree with the exact KL of the next-token distributions
    other = tiny(tok, seed=1)
    prompts = [r["prompt"] for r in ROWS]
    out2 = dpo.evaluate_samples(other, ref, tok, prompts * 300, lambda p, y: 0.0, max_new_tokens=1,
                                generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id)
    pos = position_ids_from_mask(mask)
    with torch.no_grad():
        lq = torch.log_softmax(other(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1], -1)  # (3, V)
        lp = torch.log_softmax(ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1], -1)
    exact = float(categorical_kl(lq, lp).mean())  # KL(pi || pi_ref), averaged over the 3 prompts
    assert exact > 0.01
    assert abs(out2["kl"] - exact) < 4 * out2["kl_sem"]


def test_input_validation(tok):
    model = tiny(tok)
    b = dpo.encode_preferences(tok, ROWS)
    with pytest.raises(ValueError, match="2B rows"):
        dpo.concatenated_logps(model, {k: v[:5] for k, v in b.items()})
    with pytest.raises(ValueError, match="response_mask"):
        dpo.concatenated_logps(model, {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    bad = dict(b, response_mask=torch.ones_like(b["response_mask"]))
    with pytest.raises(ValueError, match="padded position"):
        dpo.sequence_logps(model, bad)
    with pytest.raises(ValueError, match="missing"):
        dpo.encode_preferences(tok, [{"prompt": "a", "chosen": " b"}])
    with pytest.raises(ValueError, match="empty"):
        dpo.encode_preferences(tok, [])
    with pytest.raises(ValueError, match="beta"):
        dpo.train_dpo(model, model, tok, ROWS, dpo.DPOConfig(beta=0.0))
    with pytest.raises(ValueError, match="loss_type"):
        dpo.train_dpo(model, model, tok, ROWS, dpo.DPOConfig(loss_type="kto"))
    with pytest.raises(ValueError, match="batch_size"):
        dpo.train_dpo(model, model, tok, ROWS, dpo.DPOConfig(batch_size=0))
