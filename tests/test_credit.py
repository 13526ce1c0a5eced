"""How far GAE's credit reaches (lesson 06): `lambda_return_weights`, `credit_share`, and the exact
mean, second moment and per-position gradient variance of GAE on the token chain, all against a
brute-force enumeration of every episode of a small chain, in float64."""
import itertools

import pytest
import torch

from minirl import toy_mdp
from minirl.advantages import credit_share, gae, lambda_return_weights

D = torch.float64


@pytest.fixture(scope="module")
def small():
    """A 3-state, 2-token, 4-step chain, a random policy, and every episode with its probability."""
    g = torch.Generator().manual_seed(3)
    chain = toy_mdp.make_chain(n_states=3, n_actions=2, horizon=4, slip=0.3, generator=g)
    probs = torch.softmax(torch.randn(4, 3, 2, generator=g, dtype=D), -1)
    S, A, T = 3, 2, 4
    states, actions, weights, finals = [], [], [], []
    for path in itertools.product(range(A * S), repeat=T):  # (a_t, s_{t+1}) for every t
        s, p, st, ac = 0, 1.0, [], []
        for t, k in enumerate(path):
            a, s_next = divmod(k, S)
            p *= float(probs[t, s, a] * chain.transitions[s, a, s_next])
            st.append(s)
            ac.append(a)
            s = s_next
        states.append(st)
        actions.append(ac)
        weights.append(p)
        finals.append(s)
    ep = {
        "states": torch.tensor(states),
        "actions": torch.tensor(actions),
        "p": torch.tensor(weights, dtype=D),
        "rewards": torch.zeros(len(states), T, dtype=D),
    }
    ep["rewards"][:, -1] = chain.terminal_reward[torch.tensor(finals)]
    assert abs(float(ep["p"].sum()) - 1) < 1e-12
    return chain, probs, ep


def _conditional(ep, x, t, S, A):
    """E[x | s_t = s, a_t = a] over the enumerated episodes, (S, A); NaN where unreachable."""
    out = torch.full((S, A), float("nan"), dtype=D)
    for s in range(S):
        for a in range(A):
            sel = (ep["states"][:, t] == s) & (ep["actions"][:, t] == a)
            mass = ep["p"][sel].sum()
            if mass > 0:
                out[s, a] = (ep["p"][sel] * x[sel]).sum() / mass
    return out


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 0.0), (0.8, 1.0)])
def test_gae_moments_and_gradient_variance_match_enumeration(small, gamma, lam):
    chain, probs, ep = small
    T, S, A = probs.shape
    values = torch.randn(T + 1, S, generator=torch.Generator().manual_seed(1), dtype=D)
    values[-1] = 0
    t_idx = torch.arange(T).expand(len(ep["p"]), T)
    adv, _ = gae(ep["rewards"], values[t_idx, ep["states"]], None, gamma, lam)
    m1 = toy_mdp.expected_gae(chain, probs, values, gamma, lam)
    m2 = toy_mdp.gae_second_moment(chain, probs, values, gamma, lam)
    for t in range(T):
        for mine, exact in [(_conditional(ep, adv[:, t], t, S, A), m1[t]), (_conditional(ep, adv[:, t] ** 2, t, S, A), m2[t])]:
            seen = ~mine.isnan()
            assert seen.any()
            torch.testing.assert_close(mine[seen], exact[seen], rtol=1e-10, atol=1e-12)
    G = toy_mdp.tabular_score_gradients(probs, ep["states"], ep["actions"], adv).reshape(-1, T, S * A)
    mean = (ep["p"][:, None, None] * G).sum(0)
    var = (ep["p"][:, None] * (G - mean).pow(2).sum(-1)).sum(0)  # (T,)
    torch.testing.assert_close(var, toy_mdp.gae_gradient_variance(chain, probs, values, gamma, lam), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.7), (1.0, 0.0), (0.95, 1.0)])
def test_credit_share_is_the_share_of_the_true_advantage(small, gamma, lam):
    chain, probs, ep = small
    T, S, A = probs.shape
    gen = torch.Generator().manual_seed(2)
    V1, Q1 = toy_mdp.exact_values(chain, probs, 1.0)
    A_true = Q1 - V1[:-1, :, None]  # undiscounted exact advantage
    Vg, _ = toy_mdp.exact_values(chain, probs, gamma)
    for q in [0.0, 0.5, 1.0, torch.rand(T, generator=gen, dtype=D)]:
        qt = torch.as_tensor(q, dtype=D).expand(T)
        V_hat = Vg.clone()
        V_hat[:-1] = qt[:, None] * Vg[:-1] + torch.randn(T, 1, generator=gen, dtype=D)  # + b_t
        c = credit_share(T, gamma, lam, q, dtype=D)
        # brute force: average GAE over every episode, then centre over the policy's tokens
        t_idx = torch.arange(T).expand(len(ep["p"]), T)
        adv, ret = gae(ep["rewards"], V_hat[t_idx, ep["states"]], None, gamma, lam)
        for t in range(T):
            cond = _conditional(ep, adv[:, t], t, S, A)
            seen = ~cond[:, 0].isnan()
            centred = cond - (probs[t] * cond).sum(-1, keepdim=True)
            torch.testing.assert_close(centred[seen], c[t] * A_true[t][seen], rtol=1e-9, atol=1e-12)
        # and everywhere, from the exact recursion
        m1 = toy_mdp.expected_gae(chain, probs, V_hat, gamma, lam)
        torch.testing.assert_close(m1 - (probs * m1).sum(-1, keepdim=True), c[:, None, None] * A_true)
        # the critic's targets carry kappa = c / gamma^(T-1-t) of the true value's state dependence
        kappa = c / gamma ** torch.arange(T - 1, -1, -1, dtype=D)
        target = V_hat[:-1] + (probs * m1).sum(-1)  # E[R_hat_t | s_t = s], (T, S)
        torch.testing.assert_close(target - target.mean(1, keepdim=True), kappa[:, None] * (Vg[:-1] - Vg[:-1].mean(1, keepdim=True)))


def test_credit_share_closed_forms():
    for T in [1, 6, 50, 200]:
        steps = torch.arange(T - 1, -1, -1, dtype=D)
        torch.testing.assert_close(credit_share(T, 0.99, 0.95, 0.0, dtype=D), (0.99 * 0.95) ** steps)
        torch.testing.assert_close(credit_share(T, 1.0, 0.9, 0.5, dtype=D), 0.5 + 0.5 * 0.9**steps)
        torch.testing.assert_close(credit_share(T, 0.97, 1.0, 0.3, dtype=D), 0.97**steps)  # lam = 1: any critic
        torch.testing.assert_close(credit_share(T, 1.0, 0.95, 1.0, dtype=D), torch.ones(T, dtype=D))  # exact critic
        # q = 0: the share of a terminal reward that reaches token t, as gae computes it with V = 0
        r = torch.zeros(1, T, dtype=D)
        r[0, -1] = 1.0
        torch.testing.assert_close(gae(r, torch.zeros(1, T, dtype=D), None, 0.99, 0.95)[0][0], credit_share(T, 0.99, 0.95, 0.0, dtype=D))
    assert abs(float(credit_share(200, 1.0, 0.95)[0]) - 3.7e-5) < 0.05e-5  # 0.95^199
    with pytest.raises(ValueError):
        credit_share(5, 1.0, 0.95, torch.zeros(4, dtype=D))
    with pytest.raises(ValueError):
        credit_share(0)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (0.8, 0.0), (0.99, 1.0)])
def test_lambda_return_weights(gamma, lam):
    g = torch.Generator().manual_seed(4)
    T = 7
    r, v = torch.randn(T, generator=g, dtype=D), torch.randn(T, generator=g, dtype=D)
    v_ext = torch.cat([v, torch.zeros(1, dtype=D)])
    _, ret = gae(r[None], v[None], None, gamma, lam)
    for t in range(T):
        k = T - t
        w = lambda_return_weights(k, lam, dtype=D)
        assert abs(float(w.sum()) - 1) < 1e-12 and (w >= 0).all()
        G = torch.stack([sum(gamma**l * r[t + l] for l in range(n)) + gamma**n * v_ext[t + n] for n in range(1, k + 1)])
        torch.testing.assert_close((w * G).sum(), ret[0, t])
    with pytest.raises(ValueError):
        lambda_return_weights(0, 0.5)


def test_make_chain_stickiness():
    a = toy_mdp.make_chain(4, 3, 5, slip=0.2, generator=torch.Generator().manual_seed(7))
    b = toy_mdp.make_chain(4, 3, 5, slip=0.2, generator=torch.Generator().manual_seed(7), stickiness=0.0)
    c = toy_mdp.make_chain(4, 3, 5, slip=0.2, generator=torch.Generator().manual_seed(7), stickiness=0.9)
    torch.testing.assert_close(a.transitions, b.transitions)  # the default is the old chain
    torch.testing.assert_close(a.terminal_reward, c.terminal_reward)  # same draws
    torch.testing.assert_close(c.transitions, 0.9 * torch.eye(4, dtype=D)[:, None, :] + 0.1 * a.transitions)
    torch.testing.assert_close(c.transitions.sum(-1), torch.ones(4, 3, dtype=D))
