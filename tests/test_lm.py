"""minirl.lm: batching, teacher-forced log-probs, entropy, sampling and generation.

Every test uses a tiny randomly initialised GPT-2 (2 layers, width 32, vocabulary 64) and plain
integer token ids, with explicit special ids: BOS 0, EOS 1, PAD 2.
"""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from minirl import lm

BOS, EOS, PAD, V = 0, 1, 2, 64


def make_model(seed=0, n_positions=48, dropout=0.0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=n_positions,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        initializer_range=0.3,  # larger than GPT-2's 0.02: peaked, non-uniform next-token distributions
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


PROMPTS = [[BOS, 5, 6, 7], [BOS, 8], [BOS, 9, 10, 11, 12, 13], [BOS, 20, 21]]


def prompts():
    return lm.left_pad(PROMPTS, PAD)


def gen(model, seed=0, **kw):
    ids, mask = prompts()
    kw.setdefault("max_new_tokens", 12)
    g = torch.Generator().manual_seed(seed)
    return lm.generate(model, ids, mask, eos_token_id=kw.pop("eos", EOS), pad_token_id=PAD, generator=g, **kw)


def next_token_logits(model, out):
    """Teacher-forced logits that predicted each response token: (B, T, V)."""
    logits = model(input_ids=out.sequences, attention_mask=out.attention_mask,
                   position_ids=lm.position_ids_from_mask(out.attention_mask)).logits
    P = out.prompt_length
    return logits[:, P - 1 : -1]


# ------------------------------------------------------------------------------ batching


def test_left_and_right_pad():
    ids, mask = lm.left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = lm.right_pad([torch.tensor([5, 6, 7]), [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [8, PAD, PAD]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert lm.position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]
    with pytest.raises(ValueError, match="non-empty list"):
        lm.left_pad([], PAD)
    with pytest.raises(ValueError, match="pad_id"):
        lm.right_pad([[1]], None)


def test_pad_matches_trl():
    from trl.trainer.utils import pad

    rows = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    for side, fn in (("left", lm.left_pad), ("right", lm.right_pad)):
        ids, mask = fn(rows, PAD)
        assert torch.equal(ids, pad(rows, padding_value=PAD, padding_side=side))
        assert torch.equal(mask, pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side=side))


def test_split_and_sequence_sums():
    x = torch.arange(12.0).reshape(2, 6)
    p, r = lm.split_prompt_response(x, 4)
    assert torch.equal(p, x[:, :4]) and torch.equal(r, x[:, 4:]) and torch.equal(lm.response_slice(x, 4), r)
    lp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -0.25, -8.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(lm.sequence_sum(lp, m), torch.tensor([-3.0, -0.5]))
    torch.testing.assert_close(lm.sequence_mean(lp, m), torch.tensor([-1.5, -0.5]))
    with pytest.raises(ValueError, match="no masked-in"):
        lm.sequence_mean(lp, torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        lm.sequence_sum(lp, m[:, :2])
    with pytest.raises(ValueError, match="prompt_length"):
        lm.response_slice(x, 0)


# --------------------------------------------------------------------- log-probs, entropy


def test_entropy_from_logits():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(5, 7, V, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(lm.entropy_from_logits(logits), -(p * p.log()).sum(-1))
    assert torch.allclose(lm.entropy_from_logits(torch.zeros(3, V)), torch.full((3,), float(torch.log(torch.tensor(V * 1.0)))))
    # -inf logits (removed tokens) contribute nothing: entropy of the renormalised remaining tokens
    truncated = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]])
    torch.testing.assert_close(lm.entropy_from_logits(truncated), torch.log(torch.tensor([2.0])))
    # huge logits stay finite: a near point mass has entropy near 0
    assert 0 <= lm.entropy_from_logits(torch.tensor([[1e4, 0.0, -1e4]])).item() < 1e-6
    with pytest.raises(ValueError, match="floating"):
        lm.entropy_from_logits(torch.ones(2, 3, dtype=torch.long))


def test_entropy_matches_trl():
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    logits = 2 * torch.randn(3, 5, V, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lm.entropy_from_logits(logits), trl_entropy(logits))


def test_sequence_logprobs_direct_and_entropy(model):
    ids, mask = lm.right_pad([[BOS, 5, 6, 7, 8], [BOS, 9, 10]], PAD)
    lp, ent = lm.sequence_logprobs(model, ids, mask, temperature=0.7, return_entropy=True)
    for b, row in enumerate([[BOS, 5, 6, 7, 8], [BOS, 9, 10]]):  # each row alone, no padding
        logits = model(torch.tensor([row])).logits[0] / 0.7  # (L, V)
        logp = torch.log_softmax(logits, -1)
        expect = torch.stack([logp[t - 1, row[t]] for t in range(1, len(row))])
        torch.testing.assert_close(lp[b, 1 : len(row)], expect, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[b, 1 : len(row)], -(logp.exp() * logp).sum(-1)[:-1], atol=1e-5, rtol=0)
        assert lp[b, 0] == 0 and bool((lp[b, len(row):] == 0).all()) and bool((ent[b, len(row):] == 0).all())


def test_padding_side_changes_nothing(model):
    rows = [[BOS, 5, 6, 7, 8], [BOS, 9, 10]]
    right = lm.sequence_logprobs(model, *lm.right_pad(rows, PAD))
    left = lm.sequence_logprobs(model, *lm.left_pad(rows, PAD))
    torch.testing.assert_close(right[0], left[0], atol=1e-5, rtol=0)  # the longest row: no padding either way
    torch.testing.assert_close(right[1, :3], left[1, 2:], atol=1e-5, rtol=0)
    # extra padding on both sides at once (a left-padded prompt then a right-padded response)
    ids = torch.tensor([[PAD, PAD, BOS, 9, 10, PAD]])
    both = lm.sequence_logprobs(model, ids, torch.tensor([[0, 0, 1, 1, 1, 0]]))
    torch.testing.assert_close(both[0, 2:5], right[1, :3], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ sampling


def test_filter_logits_matches_transformers():
    logits = 2 * torch.randn(6, V, generator=torch.Generator().manual_seed(2))
    for k in (1, 5, V + 3):
        expect = TopKLogitsWarper(top_k=k)(None, logits.clone())
        assert torch.equal(lm.filter_logits(logits, top_k=k), expect)
    for p in (0.1, 0.5, 0.9, 1.0):
        expect = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(torch.isinf(lm.filter_logits(logits, top_p=p)), torch.isinf(expect))
    kept = torch.isfinite(lm.filter_logits(logits, top_p=0.5))
    mass = (torch.softmax(logits, -1) * kept).sum(-1)
    assert bool((mass >= 0.5).all())  # the nucleus reaches top_p ...
    smallest_kept = torch.where(kept, torch.softmax(logits, -1), torch.ones_like(logits)).min(-1).values
    assert bool((mass - smallest_kept < 0.5).all())  # ... and is the smallest such set


def test_sampling_frequencies_match_logprobs():
    """One step, 4000 rows of the same prompt: empirical frequencies -> exp(reported log-prob)."""
    model = make_model()
    ids = torch.tensor([[BOS, 5, 6]]).repeat(4000, 1)
    out = lm.generate(model, ids, torch.ones_like(ids), 1, EOS, PAD, temperature=1.3, top_k=6,
                      generator=torch.Generator().manual_seed(3))
    tokens, lp = out.response_ids[:, 0], out.logprobs[:, 0]
    probs = torch.zeros(V).scatter_(0, tokens, lp.exp())  # each drawn token's reported probability
    freq = torch.bincount(tokens, minlength=V).float() / len(tokens)
    assert (freq > 0).sum() <= 6
    assert torch.allclose(probs.sum(), torch.tensor(1.0), atol=0.05)  # the 6 kept tokens (nearly all drawn)
    assert (freq - probs).abs().max() < 0.03  # about 4 standard errors at n = 4000


# ---------------------------------------------------------------------------- generation


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_generation_logprobs_equal_teacher_forcing(model, temperature):
    out = gen(model, temperature=temperature, eos=17)
    B, P = out.sequences.shape[0], out.prompt_length
    assert out.sequences.shape == (B, P + 12) and out.response_mask.shape == (B, 12) == out.logprobs.shape
    assert torch.equal(out.response_ids, out.sequences[:, P:])
    tf = lm.response_logprobs(model, out.sequences, out.attention_mask, P, temperature=temperature)
    torch.testing.assert_close(out.logprobs, tf * out.response_mask, atol=1e-5, rtol=0)
    # a sum of T per-token terms, each within 1e-5 in float32: within T * 1e-5
    torch.testing.assert_close(lm.sequence_sum(out.logprobs, out.response_mask),
                               lm.sequence_sum(tf, out.response_mask), atol=1e-5 * out.logprobs.shape[1], rtol=0)


@pytest.mark.parametrize("top_k,top_p", [(5, None), (None, 0.8), (8, 0.7)])
def test_truncated_sampling_logprobs_are_renormalised(model, top_k, top_p):
    T = 0.9
    out = gen(model, temperature=T, top_k=top_k, top_p=top_p, eos=17)
    logits = next_token_logits(model, out) / T  # (B, T, V), the independent reference uses HF's warpers
    flat = logits.reshape(-1, V)
    if top_k is not None:
        flat = TopKLogitsWarper(top_k=top_k)(None, flat)
    if top_p is not None:
        flat = TopPLogitsWarper(top_p=top_p)(None, flat)
    ref = torch.log_softmax(flat, -1).reshape(logits.shape).gather(-1, out.response_ids[..., None]).squeeze(-1)
    m = out.response_mask.bool()
    assert bool(torch.isfinite(ref[m]).all())  # every sampled token was inside the kept set
    torch.testing.assert_close(out.logprobs[m], ref[m], atol=1e-5, rtol=0)
    untruncated = lm.response_logprobs(model, out.sequences, out.attention_mask, out.prompt_length, temperature=T)
    assert bool((out.logprobs[m] >= untruncated[m] - 1e-6).all())  # renormalising raises each probability
    assert bool((out.logprobs[m] > untruncated[m] + 1e-3).any())


def test_kv_cache_and_no_cache_give_identical_tokens(model):
    for kw in ({}, {"top_k": 10}, {"top_p": 0.9, "temperature": 0.8}, {"temperature": 0.0}):
        a = gen(model, seed=5, use_cache=True, eos=17, **kw)
        b = gen(model, seed=5, use_cache=False, eos=17, **kw)
        assert torch.equal(a.sequences, b.sequences) and torch.equal(a.response_mask, b.response_mask)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_same_seed_same_draws_other_seed_other_draws(model):
    assert torch.equal(gen(model, seed=1).sequences, gen(model, seed=1).sequences)
    assert not torch.equal(gen(model, seed=1).sequences, gen(model, seed=2).sequences)


def test_greedy_is_deterministic_argmax(model):
    a, b = gen(model, seed=1, temperature=0.0, eos=17), gen(model, seed=2, temperature=0.0, eos=17)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.logprobs, b.logprobs)
    logits = next_token_logits(model, a)  # (B, T, V)
    m = a.response_mask.bool()
    assert torch.equal(logits.argmax(-1)[m], a.response_ids[m])
    torch.testing.assert_close(a.logprobs, lm.response_logprobs(model, a.sequences, a.attention_mask, a.prompt_length) * a.response_mask, atol=1e-5, rtol=0)


def test_batch_equals_rows_one_at_a_time(model):
    ids, mask = prompts()
    batch = lm.generate(model, ids, mask, 10, EOS, PAD, temperature=0.0)
    for b, row in enumerate(PROMPTS):
        one = lm.generate(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long), 10, EOS, PAD,
                          temperature=0.0)
        assert torch.equal(one.response_ids[0], batch.response_ids[b])
        assert torch.equal(one.response_mask[0], batch.response_mask[b])
        torch.testing.assert_close(one.logprobs[0], batch.logprobs[b], atol=1e-5, rtol=0)
    # sampled rows do not interact either: each row's log-probs equal its own unpadded forward pass
    out = gen(model, seed=4, eos=17)
    for b in range(len(PROMPTS)):
        real = out.attention_mask[b].bool()
        seq = out.sequences[b][real][None]  # the row without any padding
        lp = lm.sequence_logprobs(model, seq, torch.ones_like(seq))[0, -int(out.lengths[b]):]
        torch.testing.assert_close(lp, out.logprobs[b, : int(out.lengths[b])], atol=1e-5, rtol=0)


def test_extra_left_padding_changes_nothing(model):
    ids, mask = prompts()
    wide_ids = torch.cat([torch.full((ids.shape[0], 3), PAD), ids], 1)
    wide_mask = torch.cat([torch.zeros(ids.shape[0], 3, dtype=torch.long), mask], 1)
    a = lm.generate(model, ids, mask, 10, 17, PAD, generator=torch.Generator().manual_seed(0))
    b = lm.generate(model, wide_ids, wide_mask, 10, 17, PAD, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.response_ids, b.response_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_eos_ends_the_response(model):
    """Rerun the same draws with EOS set to a token that was drawn: each row must stop right there."""
    free = gen(model, seed=0, eos=63, max_new_tokens=16)
    ids = free.response_ids
    counts = torch.bincount(ids[free.response_mask.bool()], minlength=V)
    counts[63] = 0
    eos = int(counts.argmax())  # the most frequently drawn token becomes EOS
    out = gen(model, seed=0, eos=eos, max_new_tokens=16)
    T = ids.shape[1]
    for b in range(ids.shape[0]):
        hits = (ids[b] == eos).nonzero().flatten()
        end = int(hits[0]) + 1 if len(hits) else T  # columns up to and including the first EOS
        assert torch.equal(out.response_ids[b, :end], ids[b, :end])
        assert out.response_mask[b].tolist() == [1] * end + [0] * (T - end)
        assert bool((out.response_ids[b, end:] == PAD).all()) and bool((out.logprobs[b, end:] == 0).all())
        torch.testing.assert_close(out.logprobs[b, :end], free.logprobs[b, :end])
    assert bool((out.lengths < T).any()) and int(out.lengths.min()) < int(out.lengths.max())
    assert torch.equal(out.attention_mask[:, out.prompt_length:], out.response_mask)
    # TRL's completion mask (trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions)
    is_eos = out.response_ids == eos
    eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long)
    eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
    trl_mask = (torch.arange(is_eos.size(1)).expand(is_eos.size(0), -1) <= eos_idx.unsqueeze(1)).int()
    assert torch.equal(trl_mask.long(), out.response_mask)
    # nothing after EOS counts: changing the pad ids after EOS changes no teacher-forced log-prob
    junk = out.sequences.clone()
    junk[out.attention_mask == 0] = 40
    tf = lm.response_logprobs(model, out.sequences, out.attention_mask, out.prompt_length)
    tf_junk = lm.response_logprobs(model, junk, out.attention_mask, out.prompt_length)
    torch.testing.assert_close(tf, tf_junk, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logprobs, tf, atol=1e-5, rtol=0)


def test_all_rows_finishing_early_still_returns_full_width(model):
    ids, mask = prompts()
    greedy = lm.generate(model, ids, mask, 1, EOS, PAD, temperature=0.0)
    first = greedy.response_ids[:, 0]
    row0 = lm.generate(model, ids[:1], mask[:1], 9, int(first[0]), PAD, temperature=0.0)
    assert row0.response_ids.shape == (1, 9) and row0.response_mask[0].tolist() == [1] + [0] * 8


def test_train_mode_is_restored_and_dropout_off_during_generation():
    model = make_model(dropout=0.5).train()
    out = gen(model, seed=0, eos=17)
    assert model.training
    model.eval()
    tf = lm.response_logprobs(model, out.sequences, out.attention_mask, out.prompt_length)
    torch.testing.assert_close(out.logprobs, tf, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- bad input


def test_bad_input_raises(model):
    ids, mask = prompts()
    ok = dict(max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD)
    cases = [
        (dict(prompt_ids=ids, prompt_mask=mask[:, 1:]), "shape"),
        (dict(prompt_ids=ids.float(), prompt_mask=mask), "integer"),
        (dict(prompt_ids=ids, prompt_mask=torch.cat([mask[:1], torch.zeros_like(mask[1:2]), mask[2:]])),
         r"rows \[1\] have no real tokens"),
        (dict(prompt_ids=torch.zeros(2, 0, dtype=torch.long), prompt_mask=torch.zeros(2, 0, dtype=torch.long)),
         "at least one"),
        (dict(prompt_ids=ids, prompt_mask=mask.flip(1)), "LEFT-padded"),
        (dict(prompt_ids=ids, prompt_mask=mask * 2), "0/1"),
        (dict(prompt_ids=ids + V, prompt_mask=mask), r"prompt_ids must lie in \[0, 64\)"),
        (dict(max_new_tokens=48 - ids.shape[1] + 1), "exceeds the model's context window 48"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(eos_token_id=None), "eos_token_id is required"),
        (dict(pad_token_id=None), "pad_token_id is required"),
        (dict(eos_token_id=V), r"eos_token_id must be an int in \[0, 64\)"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(generator=0), "generator"),
    ]
    for override, match in cases:
        kw = dict(prompt_ids=ids, prompt_mask=mask, **ok)
        kw.update(override)
        with pytest.raises(ValueError, match=match):
            lm.generate(model, **kw)
    lm.generate(model, ids, mask, 48 - ids.shape[1], EOS, PAD)  # exactly filling the window is fine
    with pytest.raises(ValueError, match="shape"):
        lm.sequence_logprobs(model, ids, mask[:, :-1])
    with pytest.raises(ValueError, match="temperature"):
        lm.sequence_logprobs(model, ids, mask, temperature=0)
    with pytest.raises(ValueError, match="2 dimension"):
        lm.sequence_logprobs(model, ids[0], mask[0])


# ------------------------------------------------------------------- independent references


def test_greedy_matches_transformers_generate(model):
    """`transformers`' own generate (greedy, left-padded prompts) picks the same tokens, pads after
    EOS the same way, and its raw logits give the same log-probs."""
    ids, mask = prompts()
    free = lm.generate(model, ids, mask, 10, 63, PAD, temperature=0.0)
    eos = int(free.response_ids[0, 3])  # a token greedy decoding does produce, so rows end early
    ours = lm.generate(model, ids, mask, 10, eos, PAD, temperature=0.0)
    hf = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                        pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    n = hf.sequences.shape[1] - ids.shape[1]  # HF stops when every row has ended
    assert torch.equal(hf.sequences, ours.sequences[:, : ids.shape[1] + n])
    assert bool((ours.response_ids[:, n:] == PAD).all()) and bool((ours.lengths < 10).any())
    hf_lp = torch.log_softmax(torch.stack(hf.logits, 1), -1).gather(-1, hf.sequences[:, ids.shape[1]:, None])
    m = ours.response_mask[:, :n].bool()
    torch.testing.assert_close(ours.logprobs[:, :n][m], hf_lp.squeeze(-1)[m], atol=1e-5, rtol=0)


def test_response_logprobs_follow_trl_alignment(model):
    """TRL's recipe for completion log-probs: logits[:, :-1][:, -T:] / temperature, then
    selective_log_softmax at the completion ids (trl/trainer/grpo_trainer.py). Fed the same logits
    (with padding-aware positions), it gives our response log-probs."""
    from trl.trainer.utils import selective_log_softmax

    out = gen(model, seed=2, temperature=0.8, eos=17)
    logits = model(input_ids=out.sequences, attention_mask=out.attention_mask,
                   position_ids=lm.position_ids_from_mask(out.attention_mask)).logits
    T = out.response_ids.shape[1]
    trl_lp = selective_log_softmax(logits[:, :-1][:, -T:] / 0.8, out.response_ids)
    ours = lm.response_logprobs(model, out.sequences, out.attention_mask, out.prompt_length, temperature=0.8)
    m = out.response_mask.bool()
    torch.testing.assert_close(ours[m], trl_lp[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logprobs[m], trl_lp[m], atol=1e-5, rtol=0)
