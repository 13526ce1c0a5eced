"""Best-of-n (minirl.bon): selection, the exact BoN distribution against brute-force enumeration,
the analytic KL as its no-atom limit and upper bound, the Monte-Carlo log-ratio and its
small-pool bias, one RS round."""
import itertools
import math

import pytest
import torch

from minirl import bon, lm, models, world
from minirl.tokenizer import load_tokenizer


def test_best_of_n_selection():
    scores = torch.tensor([0.1, 0.7, 0.3, 2.0, 2.0, -1.0])
    assert bon.best_of_n(scores, 3).tolist() == [1, 3]  # tie at 2.0: the first drawn wins
    assert bon.best_of_n(scores.view(2, 3), 3).tolist() == [1, 3]
    assert bon.best_of_n(scores, 1).tolist() == list(range(6))
    with pytest.raises(ValueError, match="n = 4"):
        bon.best_of_n(scores, 4)
    with pytest.raises(ValueError, match="finite"):
        bon.best_of_n(torch.tensor([0.0, float("nan")]), 2)


def brute_force(probs, rewards, n):
    """Enumerate all V^n ordered draws; the winner is the first draw with the maximal reward."""
    V = len(probs)
    out = torch.zeros(V, dtype=torch.float64)
    for draw in itertools.product(range(V), repeat=n):
        best = max(rewards[i] for i in draw)
        winner = next(i for i in draw if rewards[i] == best)
        out[winner] += math.prod(probs[i] for i in draw)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_distribution_matches_enumeration_with_ties(n):
    probs = [0.1, 0.25, 0.3, 0.05, 0.3]
    rewards = [0.2, 1.0, 0.2, -1.0, 1.0]  # two tie groups
    exact = bon.best_of_n_distribution(torch.tensor(probs, dtype=torch.float64), torch.tensor(rewards), n)
    torch.testing.assert_close(exact, brute_force(probs, rewards, n))
    assert abs(float(exact.sum()) - 1) < 1e-12


def kl(q, p):
    q, p = q.double(), p.double()
    return float((q * (q.log() - p.log())).where(q > 0, torch.zeros_like(q)).sum())


def test_analytic_kl_is_the_no_tie_limit_and_an_upper_bound():
    assert bon.best_of_n_kl(1) == 0.0
    assert math.isclose(bon.best_of_n_kl(2), math.log(2) - 0.5)
    V = 4000
    p = torch.full((V,), 1.0 / V, dtype=torch.float64)
    r = torch.randn(V, generator=torch.Generator().manual_seed(0))
    for n in (2, 4, 16):
        k = kl(bon.best_of_n_distribution(p, r, n), p)
        assert k <= bon.best_of_n_kl(n) + 1e-12
        assert bon.best_of_n_kl(n) - k < 5e-3  # many small atoms: nearly continuous
    # a coarse categorical sits well below the bound, ties even lower
    p3 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    k_distinct = kl(bon.best_of_n_distribution(p3, torch.tensor([0.0, 1.0, 2.0]), 4), p3)
    k_tied = kl(bon.best_of_n_distribution(p3, torch.tensor([0.0, 1.0, 1.0]), 4), p3)
    assert k_tied < k_distinct < bon.best_of_n_kl(4) - 0.05


def test_monte_carlo_log_ratio():
    g = torch.Generator().manual_seed(1)
    n, N = 4, 4000
    pool = torch.randn(20000, generator=g)
    draws = torch.randn(N * n, generator=g)
    best = draws[bon.best_of_n(draws, n)]
    est = float(bon.best_of_n_log_ratio(best, pool, n).mean())
    assert abs(est - bon.best_of_n_kl(n)) < 0.03, est
    # a two-level reward: the estimate matches the exact KL, far below the analytic bound
    probs = torch.tensor([0.7, 0.3], dtype=torch.float64)
    levels = torch.tensor([0.0, 1.0])
    pool_d = levels[torch.multinomial(probs, 20000, replacement=True, generator=g)]
    draws_d = levels[torch.multinomial(probs, N * n, replacement=True, generator=g)]
    est_d = float(bon.best_of_n_log_ratio(draws_d[bon.best_of_n(draws_d, n)], pool_d, n).mean())
    exact_d = kl(bon.best_of_n_distribution(probs, levels, n), probs)
    assert abs(est_d - exact_d) < 0.02 and exact_d < bon.best_of_n_kl(n) - 0.15
    with pytest.raises(ValueError, match="pool_rewards"):
        bon.best_of_n_log_ratio(best, torch.zeros(0), n)


def test_log_ratio_null_expectation():
    # a continuous reward (no atoms) and a small pool: the estimate is biased low, by what Eq. (5) says
    g = torch.Generator().manual_seed(2)
    M, P = 16, 4000
    for n in (2, 4, 8):
        null = bon.log_ratio_null_expectation(n, M)
        assert null < bon.best_of_n_kl(n) - 0.02
        pools, draws = torch.rand(P, M, generator=g), torch.rand(P, n, generator=g, dtype=torch.float64)
        best = draws.max(dim=1).values
        est = torch.stack([bon.best_of_n_log_ratio(best[i:i + 1], pools[i], n) for i in range(P)]).squeeze(1)
        assert abs(float(est.mean()) - null) < 4 * float(est.std()) / P ** 0.5, (n, float(est.mean()), null)
    assert bon.log_ratio_null_expectation(1, M) == 0.0
    # a large pool removes the bias
    assert abs(bon.log_ratio_null_expectation(4, 100_000) - bon.best_of_n_kl(4)) < 1e-3
    with pytest.raises(ValueError, match="pool_size"):
        bon.log_ratio_null_expectation(2, 0)


def test_rejection_sampling_round_runs_and_selects():
    tok = load_tokenizer()
    policy = models.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-2)
    prompts = [p["prompt"] for p in world.sentiment_prompts(16)]

    def low_ids(s):
        return ((s.response_ids < 64) & (s.response_mask > 0)).float().sum(-1) / s.response_mask.sum(-1)

    g = torch.Generator().manual_seed(0)
    out = bon.rejection_sampling_round(policy, tok, prompts, low_ids, 4, opt, max_new_tokens=6, generator=g)
    assert out["score_best"] >= out["score_all"] and math.isfinite(out["sft_loss"])
    before = out["score_all"]
    for _ in range(3):
        out = bon.rejection_sampling_round(policy, tok, prompts, low_ids, 4, opt, max_new_tokens=6, epochs=3, generator=g)
        assert out["sft_loss"] < out["sft_loss_first"] - 0.3  # SFT fits the kept responses
    assert out["score_all"] > before, (before, out)


def _old_rejection_sampling_round(policy, tokenizer, prompts, score_fn, n, optimizer, max_new_tokens=16,
                                  epochs=1, minibatch_size=16, generator=None):
    """bon.rejection_sampling_round as it was before it trained through minirl.algos.sft."""
    from minirl.losses.sft import sft_loss
    from minirl.rlhf import sample
    s = sample(policy, tokenizer, [p for p in prompts for _ in range(n)], max_new_tokens, 1.0, generator)
    scores = score_fn(s).float()
    keep = bon.best_of_n(scores, n)
    seq, attn, rmask = s.sequences[keep], s.attention_mask[keep], s.response_mask[keep]
    policy.train()
    B = keep.numel()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(B, generator=generator)
        for start in range(0, B, minibatch_size):
            i = order[start:start + minibatch_size]
            lp = lm.response_logprobs(policy, seq[i], attn[i], s.prompt_length)
            loss = sft_loss(lp, rmask[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    policy.eval()
    return {"score_all": float(scores.mean()), "score_best": float(scores[keep].mean()), "sft_loss_first": losses[0],
            "sft_loss": losses[-1]}


@pytest.mark.parametrize("default", [torch.float64, torch.float32])
def test_rejection_sampling_round_takes_the_same_steps_as_before(default):
    # the SFT steps now run through minirl.algos.sft: the same parameters bit for bit, the same scores
    before = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        tok = load_tokenizer()
        prompts = [p["prompt"] for p in world.sentiment_prompts(10)]
        score = lambda s: (s.response_ids < 64).float().sum(-1)
        runs = []
        for fn in (bon.rejection_sampling_round, _old_rejection_sampling_round):
            policy = models.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2)
            opt = torch.optim.Adam(policy.parameters(), lr=3e-2)
            g = torch.Generator().manual_seed(1)
            outs = [fn(policy, tok, prompts, score, 3, opt, max_new_tokens=6, epochs=2, minibatch_size=4,
                       generator=g) for _ in range(2)]
            runs.append((policy, outs))
        (new, new_outs), (old, old_outs) = runs
        for a, b in zip(new.parameters(), old.parameters()):
            assert torch.equal(a, b)
        for o, p in zip(new_outs, old_outs):
            assert o["score_all"] == p["score_all"] and o["score_best"] == p["score_best"]
            assert abs(o["sft_loss"] - p["sft_loss"]) < 1e-5 and abs(o["sft_loss_first"] - p["sft_loss_first"]) < 1e-5
        assert not new.training
    finally:
        torch.set_default_dtype(before)


def test_rejection_sampling_round_with_a_constraint_filter():
    # CRRAFT (lesson 15): passed_fn keeps, per prompt, the best sample that passes. All passing: the
    # same steps bit for bit as plain RS; none passing: no step; a filter changes which are kept.
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        tok = load_tokenizer()
        prompts = [p["prompt"] for p in world.sentiment_prompts(6)]
        score = lambda s: (s.response_ids < 64).double().sum(-1)

        def run(passed_fn, seed=3):
            torch.manual_seed(0)
            policy = models.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2)
            opt = torch.optim.Adam(policy.parameters(), lr=3e-2)
            g = torch.Generator().manual_seed(seed)
            kw = {} if passed_fn is None else {"passed_fn": passed_fn}
            out = bon.rejection_sampling_round(policy, tok, prompts, score, 4, opt, max_new_tokens=6,
                                               minibatch_size=4, generator=g, **kw)
            return policy, out

        plain, out_plain = run(None)
        every, out_every = run(lambda s: torch.ones(s.sequences.shape[0], dtype=torch.bool))
        assert out_plain == out_every and out_plain["kept"] == len(prompts)
        for a, b in zip(plain.parameters(), every.parameters()):
            assert torch.equal(a, b)
        torch.manual_seed(0)
        fresh = models.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2)
        none, out_none = run(lambda s: torch.zeros(s.sequences.shape[0], dtype=torch.bool))
        assert out_none["kept"] == 0 and math.isnan(out_none["sft_loss"])
        for a, b in zip(none.parameters(), fresh.parameters()):
            assert torch.equal(a, b)  # no step taken
        # only the first sample of every other prompt passes: exactly those are kept
        odd = lambda s: (torch.arange(s.sequences.shape[0]) % 8) == 0
        _, out_odd = run(odd)
        assert out_odd["kept"] == len(prompts) // 2 and out_odd["score_best"] <= out_plain["score_best"]
    finally:
        torch.set_default_dtype(before)
