"""KL divergence: Monte-Carlo estimators, the exact categorical KL, and KL coefficient controllers.

Derived in notebooks/02_kl_estimators.ipynb (estimators) and used from lesson 04 on; the
controllers are derived in notebooks/08 (RLHF with PPO).

Direction convention. Samples x ~ q, log_r = log p(x) - log q(x), and every estimator targets
KL(q || p) = E_q[log q - log p]. In RLHF q = pi_theta (we sample from the policy) and p = pi_ref,
so `log_r = ref_logprobs - logprobs` and the estimators target KL(pi_theta || pi_ref).
"""
from __future__ import annotations

import torch

from .checks import check_tensor


def k1(log_r: torch.Tensor) -> torch.Tensor:
    """k1 = -log r. Unbiased for KL(q || p), high variance, can be negative. Elementwise, any shape."""
    check_tensor(log_r, "log_r", floating=True)
    return -log_r


def k2(log_r: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2. Biased (exact to second order in log r), low variance, >= 0. Elementwise."""
    check_tensor(log_r, "log_r", floating=True)
    return 0.5 * log_r**2


def k3(log_r: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r. Unbiased (E_q[r] = 1), low variance, >= 0 since log r <= r - 1. Elementwise.

    `expm1` keeps the difference accurate when r is close to 1.
    """
    check_tensor(log_r, "log_r", floating=True)
    return torch.expm1(log_r) - log_r


def _check_logits_pair(logits_q: torch.Tensor, logits_p: torch.Tensor) -> None:
    """Two floating (..., V) logit tensors of one shape with a non-empty vocabulary dimension."""
    check_tensor(logits_q, "logits_q", floating=True)
    check_tensor(logits_p, "logits_p", floating=True)
    if logits_q.shape != logits_p.shape:
        raise ValueError(
            f"logits_q and logits_p must have the same shape, got {tuple(logits_q.shape)} "
            f"and {tuple(logits_p.shape)}"
        )
    if logits_q.ndim == 0 or logits_q.shape[-1] == 0:
        raise ValueError("logits must have a non-empty last (vocabulary) dimension")


def categorical_kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """Exact KL(q || p) = sum_v q(v) (log q(v) - log p(v)) over the last dimension.

    logits_q, logits_p: (..., V) unnormalized log-probabilities (log-softmax is applied here).
    Returns (...). Zero-probability entries of q contribute 0; where q > 0 and p = 0 the KL is inf.
    """
    _check_logits_pair(logits_q, logits_p)
    log_q = torch.log_softmax(logits_q, dim=-1)
    log_p = torch.log_softmax(logits_p, dim=-1)
    q = log_q.exp()
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    return terms.sum(-1)


class FixedKLController:
    """A constant KL coefficient with the same interface as `AdaptiveKLController`."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Proportional control of beta toward a target KL (Ziegler et al. 2019, lm-human-preferences).

        error = clip(current_kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + error * n_steps / horizon)

    `current_kl` is the mean per-sequence KL(pi_theta || pi_ref) in nats; `n_steps` is the number of
    samples (sequences) in the batch just used. Example: beta 0.15, target 6, horizon 10000, a batch
    of 512 with KL 12 gives 0.15 * (1 + 0.2 * 512 / 10000) = 0.151536.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if init_kl_coef <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"init_kl_coef, target and horizon must be > 0, got {init_kl_coef}, {target}, {horizon}"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        current_kl = float(current_kl)
        if current_kl != current_kl:  # NaN
            raise ValueError("current_kl is NaN: the KL controller cannot update")
        if n_steps <= 0:
            raise ValueError(f"n_steps must be a positive number of samples, got {n_steps}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


# ---------------------------------------------------------------------------------------------
# Reference quantities used by lesson 02 (and by tests): closed forms for the Gaussian example
# and exact, enumerated expected gradients of the estimators on categoricals.


def gaussian_estimator_moments(mu: float) -> dict[str, tuple[float, float]]:
    """Closed-form (mean, stdev) of k1, k2, k3 for q = N(0, 1), p = N(mu, 1), x ~ q.

    Here log r = log p(x) - log q(x) = mu x - mu^2 / 2 and the target is KL(q || p) = mu^2 / 2
    (returned under the key "kl" as (mu^2 / 2, 0.0)). Derived in notebooks/02_kl_estimators.ipynb:
        k1: mean mu^2/2,           stdev mu
        k2: mean mu^2/2 + mu^4/8,  stdev (mu^2/2) sqrt(mu^2 + 2)
        k3: mean mu^2/2,           stdev sqrt(exp(mu^2) - 1 - mu^2)
    These reproduce the table of J. Schulman, "Approximating KL divergence" (2020).
    """
    import math

    mu = float(mu)
    if not math.isfinite(mu) or mu == 0.0:
        raise ValueError(f"mu must be a finite non-zero mean shift, got {mu}")
    true = mu**2 / 2
    return {
        "kl": (true, 0.0),
        "k1": (true, abs(mu)),
        "k2": (true + mu**4 / 8, true * math.sqrt(mu**2 + 2)),
        "k3": (true, math.sqrt(math.expm1(mu**2) - mu**2)),
    }


def expected_estimator_gradient(
    estimator, logits_q: torch.Tensor, logits_p: torch.Tensor, mode: str = "loss", logits_behaviour: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact expected gradient (w.r.t. logits_q) of a KL estimator used one of three ways, by enumeration.

    q = softmax(logits_q) is the sampling policy (pi_theta), p = softmax(logits_p) is fixed (pi_ref),
    log_r(x) = log p(x) - log q(x), and x ~ q is enumerated over the last dimension V.
        mode="loss":   E_q[ grad k(log_r(x)) ]            the estimator in the loss, differentiated
                                                          through log q with the samples held fixed
                                                          (GRPO puts k3 in its loss this way)
        mode="reward": E_q[ stopgrad(k(log_r(x))) grad log q(x) ]   the estimator as a (negative)
                                                          reward, score-function / REINFORCE gradient
        mode="ratio":  E_q[ grad (rho(x) k(log_r(x))) ]  with rho = q / stopgrad(q): the estimator times
                                                          a ratio of value 1, = "loss" + "reward"
                                                          (TRL 1.16's default GRPO penalty for k3)
    All are gradients of a surrogate to MINIMIZE; which divergence they are the gradient of depends
    on the estimator and the mode. Results lesson 02 derives and tests/test_kl.py checks:
    loss-k1 = 0; loss-k2 = reward-k1 = grad KL(q || p); loss-k3 = grad KL(p || q) (the other
    direction); reward-k3 = grad KL(q || p) - grad KL(p || q); ratio = loss + reward = grad E_q[k],
    which is grad KL(q || p) for k1 and k3. All of this is for one categorical; for sequences see
    `sequence_kl_gradients` (lesson 02, Section 8).

    Off-policy. With `logits_behaviour` (samples x ~ b = softmax(logits_behaviour), as after the first
    PPO/GRPO epoch on a batch) the ratio is rho = q / b (value != 1, gradient through q) and
        "loss":   E_b[ grad k ]             (plain per-token k3 in GRPO's loss)
        "reward": E_b[ stopgrad(rho k) grad log q ]   (importance-weighted REINFORCE: PPO's rho * A)
        "ratio":  E_b[ grad (rho k) ]       (TRL's use_bias_correction_kl)
    "reward" and "ratio" have the same expectation as on-policy for any b (importance sampling is
    exact in expectation); "loss" does not: off-policy plain k3 in the loss is neither grad KL(q || p) nor
    grad KL(p || q). Without `logits_behaviour`, b = q (on-policy, rho = 1 in value).

    estimator: elementwise function of log_r (e.g. `k1`, `k2`, `k3`). logits_q, logits_p (and
    logits_behaviour): (..., V), same shape, floating point; leading dimensions are independent
    distributions. Returns (..., V).
    """
    _check_logits_pair(logits_q, logits_p)
    if logits_behaviour is not None:
        _check_logits_pair(logits_q, logits_behaviour)
    if mode not in ("loss", "reward", "ratio"):
        raise ValueError(f"mode must be 'loss', 'reward' or 'ratio', got {mode!r}")
    if not callable(estimator):
        raise ValueError(f"estimator must be a function of log_r such as minirl.kl.k3, got {type(estimator).__name__}")
    with torch.enable_grad():
        theta = logits_q.detach().clone().requires_grad_(True)
        log_q = torch.log_softmax(theta, dim=-1)  # (..., V)
        log_p = torch.log_softmax(logits_p.detach(), dim=-1)  # (..., V)
        log_b = log_q.detach() if logits_behaviour is None else torch.log_softmax(logits_behaviour.detach(), dim=-1)
        weights = log_b.exp()  # b(x): the expectation's weights (the sampling policy), held fixed
        rho = torch.exp(log_q - log_b)  # q / b, differentiable through q; value 1 on-policy
        k = estimator(log_p - log_q)  # (..., V) the estimator's value at every x
        if mode == "loss":
            surrogate = (weights * k).sum()
        elif mode == "reward":
            surrogate = (weights * (rho * k).detach() * log_q).sum()
        else:
            surrogate = (weights * rho * k).sum()
        (grad,) = torch.autograd.grad(surrogate, theta)
    return grad


def per_sample_estimator_gradients(estimator, logits_q: torch.Tensor, logits_p: torch.Tensor, mode: str = "loss") -> torch.Tensor:
    """On-policy per-sample gradients of a KL estimator, one row per outcome x, by autograd.

    Row x is the gradient (w.r.t. logits_q) of the one-sample surrogate that `expected_estimator_gradient`
    averages: k(log_r(x)) for mode="loss", stopgrad(k) log q(x) for "reward", rho(x) k(log_r(x)) with
    rho = q / stopgrad(q) for "ratio". So `q @ G` is the expected gradient, and the trace of the
    per-sample covariance (the gradient noise of one sample) is `(q[:, None] * G**2).sum() - |q @ G|^2`.

    logits_q, logits_p: (V,) floating point. Returns G, (V, V): G[x] = the gradient at outcome x.
    """
    _check_logits_pair(logits_q, logits_p)
    if logits_q.ndim != 1:
        raise ValueError(f"logits must be one distribution of shape (V,), got {tuple(logits_q.shape)}")
    if mode not in ("loss", "reward", "ratio"):
        raise ValueError(f"mode must be 'loss', 'reward' or 'ratio', got {mode!r}")
    if not callable(estimator):
        raise ValueError(f"estimator must be a function of log_r such as minirl.kl.k3, got {type(estimator).__name__}")

    def surrogates(theta):  # (V,) one surrogate per outcome x
        log_q = torch.log_softmax(theta, dim=-1)
        k = estimator(torch.log_softmax(logits_p.detach(), dim=-1) - log_q)
        if mode == "loss":
            return k
        if mode == "reward":
            return k.detach() * log_q
        return torch.exp(log_q - log_q.detach()) * k

    with torch.enable_grad():
        return torch.autograd.functional.jacobian(surrogates, logits_q.detach().clone())


# ---------------------------------------------------------------------------------------------
# Sequences: exact values and expected gradients of per-token KL estimators by enumeration
# (lesson 02, Section 8). A response y = (y_1, ..., y_T) has pi(y) = prod_t pi(y_t | s_t); the
# per-token log-ratio is log r_t = log pi_ref(y_t | s_t) - log pi_theta(y_t | s_t).


def all_sequences(vocab_size: int, length: int) -> torch.Tensor:
    """Every sequence of `length` tokens from `vocab_size` words, (vocab_size**length, length), in
    lexicographic order (the last token varies fastest)."""
    if vocab_size < 1 or length < 1:
        raise ValueError(f"vocab_size and length must be >= 1, got {vocab_size} and {length}")
    if vocab_size**length > 10**6:
        raise ValueError(f"{vocab_size}**{length} sequences is too many to enumerate")
    idx = torch.arange(vocab_size**length)
    powers = vocab_size ** torch.arange(length - 1, -1, -1)
    return (idx[:, None] // powers) % vocab_size


def markov_token_logprobs(logits: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities of a bigram (first-order Markov) model, the same table at every position.

    logits: (V + 1, V); row 0 holds the first token's logits, row 1 + v the logits of the next token
    after word v. sequences: (N, T) integer. Returns (N, T): log pi(y_t | y_{t-1}) (log pi(y_1) at t = 1),
    differentiable with respect to `logits`.
    """
    check_tensor(logits, "logits", ndim=2, floating=True)
    check_tensor(sequences, "sequences", ndim=2)
    if logits.shape[0] != logits.shape[1] + 1:
        raise ValueError(f"logits must have shape (V + 1, V), got {tuple(logits.shape)}")
    if sequences.is_floating_point() or sequences.min() < 0 or sequences.max() >= logits.shape[1]:
        raise ValueError(f"sequences must hold integer words in [0, {logits.shape[1]})")
    prev = torch.cat([torch.zeros_like(sequences[:, :1]), sequences[:, :-1] + 1], dim=1)  # state index
    return torch.log_softmax(logits, dim=-1)[prev, sequences]


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., t] = sum_{t' >= t} x[..., t']: the return of per-token rewards, undiscounted."""
    return x.flip(-1).cumsum(-1).flip(-1)


def sequence_kl_gradients(token_logprobs_fn, params: torch.Tensor, ref_token_logprobs: torch.Tensor) -> dict:
    """Exact sequence KLs, their gradients, and the expected gradient of each per-token placement.

    The N rows of `token_logprobs_fn(params)` (an (N, T) tensor of log pi_theta(y_t | s_t),
    differentiable in `params`) and of `ref_token_logprobs` ((N, T), log pi_ref(y_t | s_t)) must be
    ALL the length-T sequences (e.g. `all_sequences` with `markov_token_logprobs`), so that every
    expectation over y ~ pi_theta is an exact sum. Samples are held fixed as sampling does: the
    weights pi_theta(y) carry no gradient, and every gradient is of a surrogate to MINIMIZE.

    Returns a dict:
        "kl", "kl_swap": exact sequence KL(pi_theta || pi_ref) and KL(pi_ref || pi_theta) (scalars);
        "grad_kl", "grad_kl_swap": their autograd gradients w.r.t. params;
        "grads": expected gradients of the placements (shape of params), with k_t = k(log r_t):
            "k1_reward_return"       E[sum_t grad log pi_t * sum_{t'>=t} k1_t']   = grad_kl (Eq. 23)
            "k1_reward_sequence"     E[(sum_t k1_t) * sum_t grad log pi_t]        = grad_kl
            "k1_reward_same_token"   E[sum_t grad log pi_t * k1_t]               (Eq. 24, partial)
            "k3_reward_return"       as "k1_reward_return" with k3_t              (row (e) per token)
            "k1_loss", "k2_loss", "k3_loss"   E[grad sum_t k_t]   (k1: 0; k2: = same-token, Eq. 24;
                                              k3: per-state grad KL(ref || pi) at pi's states)
            "ratio_k3_loss"          E[grad sum_t rho_t k3_t], rho_t = pi_t / sg(pi_t) (= same-token)
            "sequence_k3_loss"       E[grad k3(sum_t log r_t)]                    = grad_kl_swap
            "ratio_sequence_k3_loss" E[grad rho(y) k3(sum_t log r_t)]             = grad_kl
        "values": {name: (mean, stdev)} under pi_theta of "k1_sum", "k2_sum", "k3_sum" (per-token
            estimators summed over the sequence) and "k2_sequence", "k3_sequence" (the estimator of
            the summed log-ratio); k1_sum is also the sequence-level k1. k1_sum, k3_sum and
            k3_sequence have mean "kl" exactly; the k2's are biased.
    tests/test_kl_sequence.py checks each identity above against enumeration and autograd.
    """
    check_tensor(params, "params", floating=True)
    check_tensor(ref_token_logprobs, "ref_token_logprobs", ndim=2, floating=True)
    if not callable(token_logprobs_fn):
        raise ValueError("token_logprobs_fn must map params to an (N, T) tensor of per-token log-probabilities")
    with torch.enable_grad():
        theta = params.detach().clone().requires_grad_(True)
        lq = token_logprobs_fn(theta)  # (N, T)
        if lq.shape != ref_token_logprobs.shape:
            raise ValueError(
                f"token_logprobs_fn(params) has shape {tuple(lq.shape)}, ref_token_logprobs {tuple(ref_token_logprobs.shape)}"
            )
        lp = ref_token_logprobs.detach()
        lq_seq, lp_seq = lq.sum(-1), lp.sum(-1)  # (N,) sequence log-probabilities
        for name, total in (("pi_theta", lq_seq.detach().exp().sum()), ("pi_ref", lp_seq.exp().sum())):
            if abs(total.item() - 1.0) > 1e-6:
                raise ValueError(f"{name} sums to {total.item():.6g} over the N sequences: they must be all of them")
        w = lq_seq.detach().exp()[:, None]  # (N, 1) pi_theta(y), held fixed
        lr = lp - lq  # (N, T) per-token log r, differentiable through log pi_theta
        lr_seq = lr.sum(-1)
        k1t, k3t = k1(lr).detach(), k3(lr).detach()
        rho = torch.exp(lq - lq.detach())  # per-token ratio: value 1, gradient = score
        rho_seq = torch.exp(lq_seq - lq_seq.detach())
        kl_value = (lq_seq.exp() * -lr_seq).sum()  # exact, differentiable (weights too)
        kl_swap = (lp_seq.exp() * lr_seq).sum()
        surrogates = {
            "k1_reward_return": (w * _reverse_cumsum(k1t) * lq).sum(),
            "k1_reward_sequence": (w[:, 0] * k1t.sum(-1) * lq_seq).sum(),
            "k1_reward_same_token": (w * k1t * lq).sum(),
            "k3_reward_return": (w * _reverse_cumsum(k3t) * lq).sum(),
            "k1_loss": (w * k1(lr)).sum(),
            "k2_loss": (w * k2(lr)).sum(),
            "k3_loss": (w * k3(lr)).sum(),
            "ratio_k3_loss": (w * rho * k3(lr)).sum(),
            "sequence_k3_loss": (w[:, 0] * k3(lr_seq)).sum(),
            "ratio_sequence_k3_loss": (w[:, 0] * rho_seq * k3(lr_seq)).sum(),
        }
        grad = lambda f: torch.autograd.grad(f, theta, retain_graph=True)[0]
        out = {"kl": kl_value.detach(), "kl_swap": kl_swap.detach(), "grad_kl": grad(kl_value),
               "grad_kl_swap": grad(kl_swap), "grads": {m: grad(s) for m, s in surrogates.items()}}
    lr_d, wd = lr.detach(), w[:, 0]
    per_sequence = {"k1_sum": k1(lr_d).sum(-1), "k2_sum": k2(lr_d).sum(-1), "k3_sum": k3(lr_d).sum(-1),
                    "k2_sequence": k2(lr_d.sum(-1)), "k3_sequence": k3(lr_d.sum(-1))}
    values = {}
    for name, v in per_sequence.items():
        mean = (wd * v).sum()
        values[name] = (mean, (wd * (v - mean) ** 2).sum().sqrt())
    out["values"] = values
    return out
