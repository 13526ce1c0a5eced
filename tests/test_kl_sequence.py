"""minirl.kl sequence helpers and off-policy / per-sample gradients, against enumeration and autograd (float64)."""
import itertools

import pytest
import torch

from minirl import kl

DT = torch.float64


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_all_sequences_and_markov_logprobs():
    seqs = kl.all_sequences(3, 4)
    assert seqs.shape == (81, 4)
    assert [tuple(s) for s in seqs.tolist()] == list(itertools.product(range(3), repeat=4))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=g, dtype=DT)
    lp = kl.markov_token_logprobs(logits, seqs)
    assert abs(lp.sum(-1).exp().sum().item() - 1) < 1e-12  # a distribution over the 81 sequences
    table = logits.log_softmax(-1)
    y = seqs[17].tolist()
    expected = table[0, y[0]] + sum(table[1 + a, b] for a, b in zip(y, y[1:]))
    torch.testing.assert_close(lp[17].sum(), expected)
    with pytest.raises(ValueError):
        kl.markov_token_logprobs(logits[:3], seqs)
    with pytest.raises(ValueError):
        kl.all_sequences(3, 0)


def _full_tree_model(seed=3, V=3):
    """2 tokens, a free table for pi(y1) and each row of pi(y2 | y1): the lesson's 12-parameter model."""
    gs = torch.Generator().manual_seed(seed)
    theta = torch.randn(V + V * V, generator=gs, dtype=DT)
    ref = torch.randn(V + V * V, generator=gs, dtype=DT)
    seqs = kl.all_sequences(V, 2)

    def token_logprobs(params):
        lp1 = params[:V].log_softmax(-1)[seqs[:, 0]]
        lp2 = params[V:].view(V, V).log_softmax(-1)[seqs[:, 0], seqs[:, 1]]
        return torch.stack([lp1, lp2], dim=1)

    return token_logprobs, theta, ref


@pytest.mark.parametrize("model", ["tree", "markov"])
def test_sequence_kl_gradients_identities(model):
    if model == "tree":
        fn, theta, ref = _full_tree_model()
        ref_lp = fn(ref)
    else:
        g = torch.Generator().manual_seed(1)
        seqs = kl.all_sequences(3, 4)
        theta, ref = torch.randn(4, 3, generator=g, dtype=DT), torch.randn(4, 3, generator=g, dtype=DT)
        fn = lambda p: kl.markov_token_logprobs(p, seqs)
        ref_lp = fn(ref)
    out = kl.sequence_kl_gradients(fn, theta, ref_lp)
    # exact values against an independent enumeration
    lq, lp = fn(theta).sum(-1), ref_lp.sum(-1)
    torch.testing.assert_close(out["kl"], (lq.exp() * (lq - lp)).sum())
    torch.testing.assert_close(out["kl_swap"], (lp.exp() * (lp - lq)).sum())
    th = theta.clone().requires_grad_(True)
    lq_th = fn(th).sum(-1)
    torch.testing.assert_close(out["grad_kl"], torch.autograd.grad((lq_th.exp() * (lq_th - lp)).sum(), th)[0])
    G = out["grads"]
    for m in ("k1_reward_return", "k1_reward_sequence", "ratio_sequence_k3_loss"):
        torch.testing.assert_close(G[m], out["grad_kl"])  # Eq. (23) and its sequence-level forms
    torch.testing.assert_close(G["sequence_k3_loss"], out["grad_kl_swap"])
    for m in ("k2_loss", "ratio_k3_loss"):
        torch.testing.assert_close(G[m], G["k1_reward_same_token"])  # Eq. (24)
        assert _rel(G[m], out["grad_kl"]) > 0.01  # ... which is not the sequence-KL gradient
    assert G["k1_loss"].abs().max() < 1e-12
    assert _rel(G["k3_loss"], out["grad_kl_swap"]) > 0.01
    # values: k1_sum, k3_sum and the sequence-level k3 are unbiased; their spread is enumerated
    for name in ("k1_sum", "k3_sum", "k3_sequence"):
        torch.testing.assert_close(out["values"][name][0], out["kl"])
    assert out["values"]["k2_sum"][0] != pytest.approx(out["kl"].item(), abs=1e-6)


def test_sequence_kl_gradients_length_one_is_the_categorical():
    g = torch.Generator().manual_seed(4)
    theta, ref = torch.randn(6, 5, generator=g, dtype=DT), torch.randn(6, 5, generator=g, dtype=DT)
    seqs = kl.all_sequences(5, 1)
    fn = lambda p: kl.markov_token_logprobs(p, seqs)
    out = kl.sequence_kl_gradients(fn, theta, fn(ref))
    torch.testing.assert_close(out["kl"], kl.categorical_kl(theta[0], ref[0]))
    row0 = lambda m: out["grads"][m][0]
    torch.testing.assert_close(row0("k3_loss"), kl.expected_estimator_gradient(kl.k3, theta[0], ref[0], "loss"))
    torch.testing.assert_close(row0("k2_loss"), out["grad_kl"][0])  # one token: no cross terms


def test_sequence_kl_gradients_rejects_partial_enumeration():
    g = torch.Generator().manual_seed(0)
    seqs = kl.all_sequences(3, 3)[:20]
    fn = lambda p: kl.markov_token_logprobs(p, seqs)
    theta = torch.randn(4, 3, generator=g, dtype=DT)
    with pytest.raises(ValueError, match="all of them"):
        kl.sequence_kl_gradients(fn, theta, fn(theta))


def test_ratio_mode_and_off_policy():
    g = torch.Generator().manual_seed(2)
    q, p, b = (torch.randn(6, generator=g, dtype=DT) for _ in range(3))
    E = kl.expected_estimator_gradient
    th = q.clone().requires_grad_(True)
    grad_kl = torch.autograd.grad(kl.categorical_kl(th, p), th)[0]
    grad_swap = torch.autograd.grad(kl.categorical_kl(p, th), th)[0]
    torch.testing.assert_close(E(kl.k3, q, p, "ratio"), E(kl.k3, q, p, "loss") + E(kl.k3, q, p, "reward"))
    torch.testing.assert_close(E(kl.k3, q, p, "ratio"), grad_kl)
    for mode in ("loss", "reward", "ratio"):  # behaviour = q is on-policy
        torch.testing.assert_close(E(kl.k3, q, p, mode, logits_behaviour=q), E(kl.k3, q, p, mode))
    torch.testing.assert_close(E(kl.k3, q, p, "ratio", logits_behaviour=b), grad_kl)  # rho * k3, off-policy
    torch.testing.assert_close(E(kl.k1, q, p, "reward", logits_behaviour=b), grad_kl)  # rho * A
    off = E(kl.k3, q, p, "loss", logits_behaviour=b)  # plain k3 off-policy: neither gradient
    assert _rel(off, grad_swap) > 0.05 and _rel(off, grad_kl) > 0.05
    # enumeration by hand: sum_x b(x) (1 - r(x)) grad log q(x)
    qs, ps, bs = q.softmax(-1), p.softmax(-1), b.softmax(-1)
    score = torch.eye(6, dtype=DT) - qs
    torch.testing.assert_close(off, (bs * (1 - ps / qs)) @ score)
    with pytest.raises(ValueError, match="mode"):
        E(kl.k3, q, p, "both")


@pytest.mark.parametrize("estimator,mode,coef", [
    (kl.k1, "reward", lambda lr: kl.k1(lr)), (kl.k3, "loss", lambda lr: 1 - lr.exp()),
    (kl.k2, "loss", lambda lr: kl.k1(lr)), (kl.k3, "ratio", lambda lr: kl.k1(lr)),
    (kl.k3, "reward", lambda lr: kl.k3(lr)),
])
def test_per_sample_gradients_match_the_table(estimator, mode, coef):
    g = torch.Generator().manual_seed(5)
    q, p = torch.randn(5, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT)
    G = kl.per_sample_estimator_gradients(estimator, q, p, mode)
    lr = p.log_softmax(-1) - q.log_softmax(-1)
    score = torch.eye(5, dtype=DT) - q.softmax(-1)
    torch.testing.assert_close(G, coef(lr)[:, None] * score)  # lesson 02's per-sample formulas
    torch.testing.assert_close(q.softmax(-1) @ G, kl.expected_estimator_gradient(estimator, q, p, mode))
