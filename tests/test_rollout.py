"""minirl.rollout: the shared sampler and KL plumbing (moved from minirl.rlhf, which re-exports it),
device/dtype placement, generator checks, and the rejection of a bare str where prompts are expected."""
import pytest
import torch

from minirl import models, rlhf, rollout, world

PROMPTS = [p["prompt"] for p in world.sentiment_prompts(8)]
MOVED = ["KL_ESTIMATORS", "Samples", "sample", "make_reference", "sequence_kl", "per_token_kl", "text_scorer",
         "reward_model_scorer", "apply_missing_eos_penalty", "kl_penalized_rewards", "last_token_position"]


def tiny(tok, seed=0):
    return models.tiny_gpt2(tok, seed=seed, n_layer=1, n_embd=16, n_head=2, n_positions=64)


def test_rlhf_reexports_the_same_objects():
    for name in MOVED:
        assert getattr(rlhf, name) is getattr(rollout, name), name
        assert name in rollout.__all__


def test_sample_follows_the_model_dtype_and_device(tok, float64_default):
    policy = tiny(tok)
    s = rollout.sample(policy, tok, PROMPTS, 6, generator=rollout.make_generator(0, "cpu"))
    dev = rollout.model_device(policy)
    for name in ("sequences", "attention_mask", "response_ids", "response_mask", "logprobs", "has_eos"):
        assert getattr(s, name).device == dev, name
    assert s.logprobs.dtype == torch.float64
    assert rollout.text_scorer(lambda p, r: len(r))(s).dtype == torch.float64
    ref = rollout.make_reference(policy)
    kl = rollout.sequence_kl(ref, s)
    assert kl.dtype == torch.float64 and kl.shape == (len(PROMPTS),)
    assert float(kl.abs().max()) < 1e-12  # the policy against its own copy
    # make_generator on CPU is the lessons' torch.Generator().manual_seed(seed): the same draws
    s2 = rollout.sample(policy, tok, PROMPTS, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.sequences, s2.sequences) and s.responses == s2.responses


def test_samples_hold_the_generation_unchanged(tok):
    # Samples keeps lm.generate's result instead of copies of its fields; the names still read
    policy = tiny(tok)
    s = rollout.sample(policy, tok, PROMPTS, 6, generator=rollout.make_generator(0, "cpu"))
    g = s.generation
    assert isinstance(g, rollout.Generation)
    for name in ("sequences", "attention_mask", "response_ids", "logprobs", "prompt_length"):
        assert getattr(s, name) is getattr(g, name), name
    assert s.response_mask.dtype == torch.float32 and torch.equal(s.response_mask, g.response_mask.float())
    # what Samples held before it kept the generation: the log-probs times the float mask, bit for bit
    assert torch.equal(s.logprobs, g.logprobs * s.response_mask)
    assert s.responses[0] == tok.decode(g.response_ids[0][g.response_mask[0] > 0], skip_special_tokens=True)
    empty = rollout.Samples([], [], None, torch.zeros(0, dtype=torch.bool))
    assert empty.sequences is None and empty.response_mask is None and empty.prompt_length is None
    with pytest.raises(ValueError, match="lm.Generation"):
        rollout.Samples([], [], {"sequences": None}, torch.zeros(0, dtype=torch.bool))


def test_a_generator_on_another_device_is_rejected_before_sampling():
    rollout.check_generator(None, "cpu")
    rollout.check_generator(torch.Generator(), torch.device("cpu"))
    with pytest.raises(ValueError, match="make_generator"):
        rollout.check_generator(torch.Generator(), "cuda")  # CUDA model, CPU generator
    with pytest.raises(ValueError, match="torch.Generator"):
        rollout.check_generator(0, "cpu")


def test_bare_string_prompts_are_rejected(tok):
    policy = tiny(tok)
    with pytest.raises(ValueError, match="got one str"):
        rollout.sample(policy, tok, "write a review of the soup:", 4)
    with pytest.raises(ValueError, match="non-empty list"):
        rollout.sample(policy, tok, [], 4)
    with pytest.raises(ValueError, match="non-empty str"):
        rollout.sample(policy, tok, ["ok", ""], 4)
    cfg = rlhf.PPOConfig(batch_size=4, minibatch_size=2, max_new_tokens=4, n_iterations=1)
    state = rlhf.init_ppo(policy, cfg)
    score = lambda s: torch.zeros(len(s.prompts))
    with pytest.raises(ValueError, match="got one str"):
        rlhf.train_ppo(state, tok, "write a review of the soup:", score, cfg)
    assert state.history == []
    with pytest.raises(ValueError, match="got one str"):
        rlhf.evaluate_policy(policy, state.ref_model, tok, "write a review of the soup:", score)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_on_cuda_with_a_cuda_generator(tok):
    policy = tiny(tok).cuda()
    s = rollout.sample(policy, tok, PROMPTS, 6, generator=rollout.make_generator(0, "cuda"))
    assert s.sequences.is_cuda and s.logprobs.is_cuda
    assert rollout.text_scorer(lambda p, r: len(r))(s).is_cuda
    assert rollout.sequence_kl(rollout.make_reference(policy), s).is_cuda
    with pytest.raises(ValueError, match="make_generator"):
        rollout.sample(policy, tok, PROMPTS, 6, generator=torch.Generator())


# ------------------------------------------------- minirl.evaluation vs the old implementations

def _old_rlhf_evaluate_policy(policy, ref_model, tokenizer, prompts, score_fn, gold_fn=None, max_new_tokens=16,
                              temperature=1.0, generator=None):
    """minirl.rlhf.evaluate_policy as it was at commit 6879bdf, before it became a wrapper."""
    prompts = list(prompts)
    policy.eval()
    s = rlhf.sample(policy, tokenizer, prompts, max_new_tokens, temperature, generator)
    values = {"kl": rlhf.sequence_kl(ref_model, s, temperature), "proxy": score_fn(s)}
    if gold_fn is not None:
        gold = gold_fn(s)
        values.update({f"gold_{k}" if k else "gold": v for k, v in (gold if isinstance(gold, dict) else {"": gold}).items()})
    n = len(prompts)
    out = {"n": n}
    for k, v in values.items():
        v = torch.as_tensor(v).detach().double()
        out[k], out[f"{k}_sem"] = float(v.mean()), float(v.std() / n ** 0.5)
    out["truncated"] = float((~s.has_eos).double().mean())
    out["length"] = float(s.response_mask.sum(-1).double().mean())
    return out


def _old_dpo_evaluate_samples(policy, ref_model, tokenizer, prompts, gold_fn, max_new_tokens=16, temperature=1.0,
                              generator=None):
    """minirl.dpo.evaluate_samples as it was at commit 6879bdf, before it became a wrapper."""
    import math
    prompts = list(prompts)
    policy.eval()
    s = rlhf.sample(policy, tokenizer, prompts, max_new_tokens, temperature=temperature, generator=generator)
    kl = rlhf.sequence_kl(ref_model, s, temperature).double()
    gold = torch.tensor([float(gold_fn(p, r)) for p, r in zip(s.prompts, s.responses)], dtype=torch.float64)
    n = len(prompts)
    sem = (lambda x: float(x.std() / math.sqrt(n)) if n > 1 else float("nan"))
    return {"gold": float(gold.mean()), "gold_sem": sem(gold), "kl": float(kl.mean()), "kl_sem": sem(kl),
            "length": float(s.response_mask.sum(-1).mean()), "logp": float(s.logprobs.sum(-1).mean()),
            "truncated": float((~s.has_eos).double().mean())}


def _same(a, b):
    """Same keys in the same order, and bitwise-equal floats (nan == nan)."""
    assert list(a) == list(b)
    for k in a:
        assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), (k, a[k], b[k])


@pytest.mark.parametrize("default", [torch.float64, torch.float32])
def test_rlhf_and_dpo_evaluators_match_their_old_implementations(tok, default):
    from minirl import dpo, evaluation
    before = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        ref = tiny(tok)
        policy = tiny(tok, seed=1)  # another policy: KL > 0
        prompts = PROMPTS * 2
        proxy = lambda s: (s.response_ids < 64).double().sum(-1)
        golds = lambda s: {"len": s.response_mask.sum(-1), "eos": s.has_eos.double()}
        gold_text = lambda p, r: len(r) / 10 - 0.3 * r.count("o")
        for T, temp in ((6, 1.0), (9, 0.7)):
            g = lambda: torch.Generator().manual_seed(7)
            new = rlhf.evaluate_policy(policy, ref, tok, prompts, proxy, golds, T, temp, g())
            _same(new, _old_rlhf_evaluate_policy(policy, ref, tok, prompts, proxy, golds, T, temp, g()))
            assert new["kl_sem"] > 1e-4  # two different models: the KL estimates vary
            new = rlhf.evaluate_policy(policy, ref, tok, prompts, proxy, None, T, temp, g())
            _same(new, _old_rlhf_evaluate_policy(policy, ref, tok, prompts, proxy, None, T, temp, g()))
            for ps in (prompts, prompts[:1]):  # one prompt: standard errors are nan
                new = dpo.evaluate_samples(policy, ref, tok, ps, gold_text, T, temp, g())
                _same(new, _old_dpo_evaluate_samples(policy, ref, tok, ps, gold_text, T, temp, g()))
        # the shared function: both wrappers' numbers in one call
        both = evaluation.evaluate_policy(policy, ref, tok, prompts, {"proxy": proxy, "gold": rlhf.text_scorer(gold_text)},
                                          max_new_tokens=6, generator=torch.Generator().manual_seed(7))
        old = _old_rlhf_evaluate_policy(policy, ref, tok, prompts, proxy, None, 6, 1.0, torch.Generator().manual_seed(7))
        assert list(both) == ["n", "kl", "kl_sem", "proxy", "proxy_sem", "gold", "gold_sem", "truncated", "length", "logp"]
        assert all(both[k] == old[k] for k in old)
    finally:
        torch.set_default_dtype(before)


def test_evaluate_policy_rejects_bad_inputs(tok):
    from minirl import dpo, evaluation
    policy = tiny(tok)
    ref = rollout.make_reference(policy)
    ok = lambda s: torch.zeros(len(s.prompts))
    with pytest.raises(ValueError, match="got one str"):
        evaluation.evaluate_policy(policy, ref, tok, "the soup", {"proxy": ok})
    with pytest.raises(ValueError, match="got one str"):
        dpo.evaluate_samples(policy, ref, tok, "the soup", lambda p, r: 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        evaluation.evaluate_policy(policy, ref, tok, PROMPTS[:1], {"proxy": ok})
    with pytest.raises(ValueError, match="scorers"):
        evaluation.evaluate_policy(policy, ref, tok, PROMPTS, {"kl": ok})
    with pytest.raises(ValueError, match="one value per sample"):
        evaluation.evaluate_policy(policy, ref, tok, PROMPTS, {"proxy": lambda s: torch.zeros(3)}, max_new_tokens=3)
    with pytest.raises(ValueError, match="1 dimension"):
        evaluation.evaluate_policy(policy, ref, tok, PROMPTS, {"proxy": lambda s: torch.zeros(8, 1)}, max_new_tokens=3)


def test_sequence_kl_in_length_chunks(tok, float64_default):
    # chunk=k: the reference pass over groups of similar length, each cut to its longest response
    from minirl.paths import DATA_DIR
    policy = models.load_policy(DATA_DIR / "tiny-sft")[0]  # trained: it ends responses at uneven lengths
    ref = tiny(tok)
    s = rollout.sample(policy, tok, PROMPTS * 3, 24, generator=torch.Generator().manual_seed(3))
    lengths = s.response_mask.sum(-1)
    assert int(lengths.min()) < int(lengths.max())  # uneven lengths: chunks get cut
    whole = rollout.sequence_kl(ref, s)
    for chunk in (1, 5, 24, 100):
        kl = rollout.sequence_kl(ref, s, chunk=chunk)
        assert kl.shape == whole.shape and torch.allclose(kl, whole, rtol=0, atol=1e-12), chunk
    # each chunk is exactly the whole-batch function on the rows and columns it keeps
    idx = lengths.argsort()[:5]
    w, P = int(lengths[idx].max()), s.prompt_length
    one = rollout._sequence_kl(ref, s.sequences[idx, : P + w], s.attention_mask[idx, : P + w], P,
                               s.logprobs[idx, :w], s.response_mask[idx, :w], 1.0)
    assert torch.equal(rollout.sequence_kl(ref, s, chunk=5)[idx], one)
    with pytest.raises(ValueError, match="chunk"):
        rollout.sequence_kl(ref, s, chunk=0)


def test_evaluate_policy_without_a_reference(tok, float64_default):
    # ref_model=None: the same samples and scores, no KL (and no reference pass)
    from minirl import evaluation
    ref, policy = tiny(tok), tiny(tok, seed=1)
    gold = rlhf.text_scorer(lambda p, r: len(r) / 10)
    g = lambda: torch.Generator().manual_seed(5)
    with_kl = evaluation.evaluate_policy(policy, ref, tok, PROMPTS * 2, {"gold": gold}, max_new_tokens=8, generator=g())
    no_kl = evaluation.evaluate_policy(policy, None, tok, PROMPTS * 2, {"gold": gold}, max_new_tokens=8, generator=g())
    assert list(no_kl) == ["n", "gold", "gold_sem", "truncated", "length", "logp"]
    assert all(no_kl[k] == with_kl[k] for k in no_kl)
    chunked = evaluation.evaluate_policy(policy, ref, tok, PROMPTS * 2, {"gold": gold}, max_new_tokens=8,
                                         generator=g(), kl_chunk=4)
    assert abs(chunked["kl"] - with_kl["kl"]) < 1e-12 and chunked["gold"] == with_kl["gold"]
