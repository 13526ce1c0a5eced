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
