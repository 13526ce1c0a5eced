"""A token chain: a tiny finite-horizon MDP where everything is exactly computable.

Used by notebooks/06_gae.ipynb (true advantages, bias and variance of GAE) and
notebooks/07_ppo.ipynb (PPO on a tabular policy, with the exact return and exact KL).

The chain imitates generating a response of `horizon` tokens: at position t the state is one of
S "summaries of the prefix" s, the policy picks a token a from A, and the next state is
`next_state[s, a]` with probability 1 - slip, or a uniformly random state with probability slip
(the environment is stochastic, like a prefix that an LM cannot summarize perfectly). The only
reward is sparse and terminal: `terminal_reward[s_T]` after the last token. Policies are tables
`probs[t, s, a]` (T, S, A), time-dependent like an LM's.

Because S, A and T are small, values, advantages, state distributions, the expected return and
its gradient, and the mean and variance of the GAE policy-gradient estimator, are all computed
exactly by dynamic programming, in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_tensor


@dataclass
class TokenChain:
    """transitions (S, A, S): P(s' | s, a). terminal_reward (S,): reward of the final state.
    start (S,): distribution of s_0. horizon: number of tokens T per episode."""

    transitions: torch.Tensor
    terminal_reward: torch.Tensor
    start: torch.Tensor
    horizon: int

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[1]


def make_chain(
    n_states: int = 4,
    n_actions: int = 3,
    horizon: int = 6,
    slip: float = 0.3,
    generator: torch.Generator | None = None,
    stickiness: float = 0.0,
) -> TokenChain:
    """A random chain: a random deterministic `next_state[s, a]` blended with a uniform slip,
    terminal rewards uniform in [0, 1], start state 0. float64 throughout.

    stickiness: the probability that the state stays where it is whatever the token (the rest of
    the transition is the blend above). With stickiness near 1 an early token's effect on the final
    state survives a long response instead of being mixed away (lesson 06 uses it for T = 30 .. 200).
    0 (the default) gives exactly the chain of earlier versions, with the same random draws."""
    if n_states < 2 or n_actions < 2 or horizon < 1 or not (0 <= slip <= 1) or not (0 <= stickiness <= 1):
        raise ValueError(
            f"need n_states >= 2, n_actions >= 2, horizon >= 1, slip and stickiness in [0, 1]; got "
            f"{n_states}, {n_actions}, {horizon}, {slip}, {stickiness}"
        )
    S, A = n_states, n_actions
    nxt = torch.randint(0, S, (S, A), generator=generator)
    P = slip * torch.full((S, A, S), 1.0 / S, dtype=torch.float64)
    P += (1 - slip) * torch.nn.functional.one_hot(nxt, S).to(torch.float64)
    if stickiness > 0:
        P = stickiness * torch.eye(S, dtype=torch.float64)[:, None, :] + (1 - stickiness) * P
    R = torch.rand(S, generator=generator, dtype=torch.float64)
    start = torch.zeros(S, dtype=torch.float64)
    start[0] = 1.0
    return TokenChain(P, R, start, horizon)


def _check_probs(chain: TokenChain, probs: torch.Tensor) -> None:
    check_tensor(probs, "probs", ndim=3, floating=True)
    want = (chain.horizon, chain.n_states, chain.n_actions)
    if tuple(probs.shape) != want:
        raise ValueError(f"probs must have shape (T, S, A) = {want}, got {tuple(probs.shape)}")


def exact_values(chain: TokenChain, probs: torch.Tensor, gamma: float = 1.0):
    """Backward dynamic programming for the policy `probs` (T, S, A).

    Q[t, s, a] = sum_s' P(s'|s, a) (r_t(s') + gamma V[t+1, s']),  r_t(s') = R(s') at t = T-1 else 0
    V[t, s]    = sum_a probs[t, s, a] Q[t, s, a],                  V[T, :] = 0 (the episode ends)
    Returns V (T+1, S) and Q (T, S, A); the exact advantage is Q - V[:-1, :, None].
    Differentiable in `probs`.
    """
    _check_probs(chain, probs)
    T, S = chain.horizon, chain.n_states
    V = [torch.zeros(S, dtype=probs.dtype)]
    Q = []
    for t in reversed(range(T)):
        r = chain.terminal_reward if t == T - 1 else torch.zeros_like(chain.terminal_reward)
        q = chain.transitions @ (r + gamma * V[0])  # (S, A)
        Q.insert(0, q)
        V.insert(0, (probs[t] * q).sum(-1))
    return torch.stack(V), torch.stack(Q)


def state_distribution(chain: TokenChain, probs: torch.Tensor) -> torch.Tensor:
    """d[t, s] = P(s_t = s) under the policy, (T, S). Differentiable in `probs`."""
    _check_probs(chain, probs)
    d = [chain.start.to(probs.dtype)]
    for t in range(chain.horizon - 1):
        d.append(torch.einsum("s,sa,sax->x", d[-1], probs[t], chain.transitions))
    return torch.stack(d)


def expected_return(chain: TokenChain, probs: torch.Tensor) -> torch.Tensor:
    """J = E[R(s_T)] under the policy (undiscounted), a 0-dim tensor differentiable in `probs`."""
    V, _ = exact_values(chain, probs, gamma=1.0)
    return chain.start @ V[0]


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """logits - logsumexp(logits) over the last dimension: the same as `torch.log_softmax`.

    Written out because on a busy multi-core CPU torch's (log_)softmax kernels on tiny tensors can
    cost ~10 ms per call (thread synchronization), which dominates a tabular training loop."""
    return logits - torch.logsumexp(logits, -1, keepdim=True)


def policy_kl(chain: TokenChain, logits_old: torch.Tensor, logits_new: torch.Tensor) -> torch.Tensor:
    """Exact per-token KL(pi_old || pi_new), averaged over the states pi_old visits:
    (1/T) sum_t sum_s d_old[t, s] KL(pi_old(.|t, s) || pi_new(.|t, s)). The quantity that PPO's
    `approx_kl` estimates from samples. logits (T, S, A)."""
    log_old, log_new = log_softmax(logits_old), log_softmax(logits_new)
    probs_old = log_old.exp()
    d = state_distribution(chain, probs_old)  # (T, S)
    kl = (probs_old * (log_old - log_new)).sum(-1)  # (T, S), = minirl.kl.categorical_kl
    return (d * kl).sum() / chain.horizon


def sample(chain: TokenChain, probs: torch.Tensor, n: int, generator: torch.Generator | None = None) -> dict:
    """n episodes from the policy. Returns a dict of (n, T) tensors: `states` (s_t before token t),
    `actions`, `rewards` (0 except R(s_T) at t = T-1), and `final_states` (n,)."""
    _check_probs(chain, probs)
    T = chain.horizon
    s = torch.multinomial(chain.start.expand(n, -1), 1, generator=generator)[:, 0]
    states, actions = [], []
    for t in range(T):
        a = torch.multinomial(probs[t, s], 1, generator=generator)[:, 0]
        states.append(s)
        actions.append(a)
        s = torch.multinomial(chain.transitions[s, a], 1, generator=generator)[:, 0]
    rewards = torch.zeros(n, T, dtype=probs.dtype)
    rewards[:, -1] = chain.terminal_reward[s]
    return {
        "states": torch.stack(states, 1),
        "actions": torch.stack(actions, 1),
        "rewards": rewards,
        "final_states": s,
    }


def tabular_score_gradients(probs: torch.Tensor, states, actions, weights) -> torch.Tensor:
    """Per-episode policy-gradient estimates for a softmax table of logits theta[t, s, a]:

        g = sum_t weights_t * grad_theta log pi(a_t | t, s_t),
        grad_{theta[t, s_t, :]} log pi(a_t | t, s_t) = onehot(a_t) - pi(. | t, s_t).

    probs (T, S, A); states, actions (n, T) long; weights (n, T) (e.g. advantages).
    Returns (n, T*S*A), one flattened gradient per episode.
    """
    T, S, A = probs.shape
    n = states.shape[0]
    t_idx = torch.arange(T).expand(n, T)
    pi = probs[t_idx, states]  # (n, T, A)
    score = torch.nn.functional.one_hot(actions, A).to(probs.dtype) - pi  # (n, T, A)
    g = torch.zeros(n, T, S, A, dtype=probs.dtype)
    g[torch.arange(n)[:, None], t_idx, states] = weights[..., None] * score
    return g.reshape(n, -1)


def expected_gae(
    chain: TokenChain, probs: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> torch.Tensor:
    """E[A_hat_t | s_t = s, a_t = a] of GAE computed with an arbitrary value table, exactly.

    values (T+1, S) with values[T] = 0 (or anything: it is the value after the last token).
    The GAE recursion A_t = delta_t + gamma lam A_{t+1} holds in expectation:
        E[A_t | s, a] = E[delta_t | s, a] + gamma lam sum_s' P(s'|s, a) sum_a' pi(a'|s') E[A_{t+1} | s', a']
    Returns (T, S, A). With exact values and any lam it equals Q - V (for this gamma).
    """
    _check_probs(chain, probs)
    T = chain.horizon
    if tuple(values.shape) != (T + 1, chain.n_states):
        raise ValueError(f"values must have shape (T+1, S) = {(T + 1, chain.n_states)}, got {tuple(values.shape)}")
    out = [None] * T
    nxt = torch.zeros(chain.n_states, dtype=probs.dtype)  # sum_a' pi E[A_{t+1} | s', a']
    for t in reversed(range(T)):
        r = chain.terminal_reward if t == T - 1 else torch.zeros_like(chain.terminal_reward)
        delta = chain.transitions @ (r + gamma * values[t + 1]) - values[t][:, None]  # (S, A)
        out[t] = delta + gamma * lam * (chain.transitions @ nxt)
        nxt = (probs[t] * out[t]).sum(-1)
    return torch.stack(out)


def expected_score_gradient(chain: TokenChain, probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """E[sum_t W(t, s_t, a_t) grad log pi(a_t | t, s_t)] for the softmax table theta[t, s, a]:

        grad[t, s, :] = d[t, s] * pi(.|t, s) * (W[t, s, :] - sum_a pi(a|t, s) W[t, s, a])

    weights (T, S, A), e.g. the exact advantages (then this is the exact policy gradient) or
    `expected_gae(...)` (then it is the mean of the GAE policy-gradient estimator).
    Returns (T*S*A,), flattened like `tabular_score_gradients`.
    """
    d = state_distribution(chain, probs)  # (T, S)
    centered = weights - (probs * weights).sum(-1, keepdim=True)
    return (d[..., None] * probs * centered).reshape(-1)


def gae_second_moment(
    chain: TokenChain, probs: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> torch.Tensor:
    """E[A_hat_t^2 | s_t = s, a_t = a] of GAE computed with a value table, exactly (the companion of
    `expected_gae`). With delta = r_t(s') + gamma values[t+1, s'] - values[t, s] and M1, M2 the
    policy averages of the first and second moments at t + 1:
        E[A_t^2 | s, a] = sum_s' P(s'|s, a) (delta^2 + 2 gamma lam delta M1(s') + (gamma lam)^2 M2(s'))
    values (T+1, S). Returns (T, S, A).
    """
    m1 = expected_gae(chain, probs, values, gamma, lam)  # checks the shapes
    T, S = chain.horizon, chain.n_states
    out = [None] * T
    nxt1 = torch.zeros(S, dtype=probs.dtype)
    nxt2 = torch.zeros(S, dtype=probs.dtype)
    for t in reversed(range(T)):
        r = chain.terminal_reward if t == T - 1 else torch.zeros_like(chain.terminal_reward)
        delta = (r + gamma * values[t + 1])[None, :] - values[t][:, None]  # (S, S'): from s to s'
        inner = delta[:, None, :] ** 2 + 2 * gamma * lam * delta[:, None, :] * nxt1 + (gamma * lam) ** 2 * nxt2
        out[t] = (chain.transitions * inner).sum(-1)  # (S, A)
        nxt1 = (probs[t] * m1[t]).sum(-1)
        nxt2 = (probs[t] * out[t]).sum(-1)
    return torch.stack(out)


def gae_gradient_variance(
    chain: TokenChain, probs: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> torch.Tensor:
    """Exact variance, per position t, of one episode's GAE policy-gradient estimate restricted to the
    logits theta[t] of that position: E||g_t - E g_t||^2 with g_t = A_hat_t (onehot(a_t) - pi(.|t, s_t))
    in row s_t (see `tabular_score_gradients`). The blocks are disjoint, so the sum over t is the
    variance of the whole estimate. values (T+1, S). Returns (T,).
    """
    T = chain.horizon
    m1 = expected_gae(chain, probs, values, gamma, lam)
    m2 = gae_second_moment(chain, probs, values, gamma, lam)
    d = state_distribution(chain, probs)  # (T, S)
    score_sq = 1 - 2 * probs + probs.pow(2).sum(-1, keepdim=True)  # |onehot(a) - pi|^2, (T, S, A)
    second = (d[..., None] * probs * score_sq * m2).sum((1, 2))  # E|g_t|^2, (T,)
    mean = expected_score_gradient(chain, probs, m1).reshape(T, -1)
    return second - mean.pow(2).sum(1)
