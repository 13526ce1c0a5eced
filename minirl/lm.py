"""Sequences and language models as policies: per-token log-probs, entropy, batching, generation.

Derived in notebooks/03 (teacher-forced log-probs) and notebooks/04 (the LM as a policy).
Works for any `transformers` causal LM (the tiny GPT-2 and GPT-2 124M alike), with left- or
right-padded batches.

Layout conventions used everywhere in minirl:
- A batch of prompts is LEFT-padded, so every prompt ends at column P - 1 and the response
  starts at column P for every row: `sequences[:, P:]` is the response.
- A response is RIGHT-padded: after its first EOS come pad tokens, which count nowhere
  (attention mask 0, response mask 0, log-prob 0).
- Positions count real tokens only (`position_ids_from_mask`), so padding changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import as_float_mask, check_tensor

# ----------------------------------------------------------------------------- batching


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens: left padding must not shift the first real token
    away from position 0. (B, T) -> (B, T), 0 on left padding."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


def _pad(seqs, pad_id: int, side: str):
    if not isinstance(seqs, (list, tuple)) or len(seqs) == 0:
        raise ValueError(f"expected a non-empty list of token-id lists, got {type(seqs).__name__} {seqs!r:.60}")
    if not isinstance(pad_id, int) or isinstance(pad_id, bool):
        raise ValueError(f"pad_id must be an int, got {pad_id!r}")
    rows = [torch.as_tensor(s, dtype=torch.long).flatten() for s in seqs]
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(L - len(r), L) if side == "left" else slice(0, len(r))
        ids[i, cols] = r
        mask[i, cols] = 1
    return ids, mask


def left_pad(seqs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch lists of token ids with padding on the LEFT (the layout prompts need for generation).

    seqs: a list of B sequences (lists or 1-D tensors) of ids. Returns (ids, attention_mask),
    both (B, L) long with L the longest length; the mask is 1 on real tokens, 0 on padding."""
    return _pad(seqs, pad_id, "left")


def right_pad(seqs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch lists of token ids with padding on the RIGHT (the usual layout for training).
    Same shapes as `left_pad`."""
    return _pad(seqs, pad_id, "right")


def _check_ids_and_mask(input_ids, attention_mask, ids_name="input_ids", mask_name="attention_mask"):
    check_tensor(input_ids, ids_name, ndim=2)
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"{ids_name} must be integer token ids, got dtype {input_ids.dtype}")
    check_tensor(attention_mask, mask_name)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"{mask_name} must have the shape of {ids_name} {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    as_float_mask(attention_mask, input_ids.float(), mask_name)  # 0/1 values only


# --------------------------------------------------------------------- log-probs, entropy


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits -> float32 before softmax; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H = -sum_v p_v log p_v (nats) of softmax(logits) over the last dimension.

    logits: (..., V), may hold -inf (tokens removed by top-k / top-p). Returns (...).
    Computed in float32 or wider, from log_softmax so that it is stable for large logits."""
    check_tensor(logits, "logits", floating=True)
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got {tuple(logits.shape)}")
    logp = torch.log_softmax(_upcast(logits), -1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """Per-token log-probabilities of the given tokens under `model` (teacher forcing).

    input_ids, attention_mask: (B, T), attention_mask 1 on real tokens, 0 on padding (either side,
    or both, as in a left-padded prompt followed by a right-padded response).
    Returns logprobs (B, T) with logprobs[:, t] = log pi(input_ids[:, t] | input_ids[:, :t]) for
    t >= 1; entry 0 (no prefix) and padded positions are 0. Logits are divided by `temperature`
    so that the result matches the distribution a sampler at that temperature drew from (with no
    top-k / top-p truncation). Gradients flow (wrap in torch.no_grad() for old/reference log-probs).
    With `return_entropy`, also returns the entropy (B, T) of the predictive distribution for the
    token at t (same alignment, 0 where logprobs is 0).

    Compared with TRL: the alignment is TRL's (`selective_log_softmax(logits[:, :-1], ids[:, 1:])`,
    of which TRL keeps the completion columns, as `response_logprobs` does). The difference: we
    pass position ids that count real tokens only, while TRL's trainers call the model without
    them; for a model with absolute positions (GPT-2) TRL's log-probs of a left-padded row then
    depend on how much padding it got, ours do not (and match `generate`, and HF's generate).
    """
    _check_ids_and_mask(input_ids, attention_mask)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    )
    logits = _upcast(out.logits[:, :-1]) / temperature  # (B, T-1, V) predicts tokens 1..T-1
    logp_all = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    lp = logp_all.gather(-1, targets).squeeze(-1)  # (B, T-1)
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(lp.dtype)
    zero = torch.zeros_like(lp[:, :1])
    logprobs = torch.cat([zero, lp * valid], dim=1)  # (B, T)
    if not return_entropy:
        return logprobs
    ent = entropy_from_logits(logits) * valid  # (B, T-1)
    return logprobs, torch.cat([zero, ent], dim=1)


def masked_sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                             temperature: float = 1.0) -> torch.Tensor:
    """`sequence_logprobs(model, input_ids, attention_mask, temperature) * mask`, with the LM head
    applied only where `mask` is 1: (B, T) -> (B, T), zero wherever mask is 0.

    A summed or averaged response log-prob (DPO and its family, SFT) reads the log-probs of the
    response tokens only, yet `sequence_logprobs` projects EVERY position (prompt and padding
    too) onto the vocabulary and takes a log-softmax over it. Here the model's body runs once
    (`model.base_model`, GPT-2's `model.transformer`), the hidden states that predict a masked
    token are gathered into one (K, H) matrix, and only those K rows go through the output layer
    (`model.get_output_embeddings()`), the log-softmax and the gather. For the tiny model, whose
    vocabulary is several times its width, the head is a large part of a forward and backward,
    so this saves the time of the positions that never count. TRL's DPOTrainer does the same with
    its "fused LM head" (labels of -100 outside the completion).

    Same alignment, positions and temperature as `sequence_logprobs`; gradients flow. The values
    equal it up to float rounding (a (K, H) @ (H, V) product may sum in another order than the
    (B, T, H) one). A model without a separate body and head (no `base_model` distinct from
    itself, or no output embeddings) falls back to `sequence_logprobs(...) * mask`.
    """
    _check_ids_and_mask(input_ids, attention_mask)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_tensor(mask, "mask")
    if mask.shape != input_ids.shape:
        raise ValueError(f"mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
    as_float_mask(mask, input_ids.float(), "mask")  # 0/1 values only
    body = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if body is None or body is model or head is None:
        lp = sequence_logprobs(model, input_ids, attention_mask, temperature)
        return lp * as_float_mask(mask, lp, "mask")
    hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # (B, T, H)
    # position t >= 1 counts if it is masked in and both it and its predecessor are real tokens
    take = (mask[:, 1:].bool() & attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool())  # (B, T-1)
    rows, cols = take.nonzero(as_tuple=True)  # (K,) each
    logits = _upcast(head(hidden[rows, cols])) / temperature  # (K, V): state at t-1 predicts token t
    lp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[rows, cols + 1][:, None]).squeeze(-1)  # (K,)
    out = lp.new_zeros(input_ids.shape)  # (B, T), 0 outside the mask
    return out.index_put((rows, cols + 1), lp)


def response_slice(x: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """The response columns `x[:, P:]` of a (B, P + T, ...) tensor laid out prompt-then-response
    (left-padded prompts of width P). Works for ids, masks and per-token log-probs alike."""
    check_tensor(x, "x")
    if x.ndim < 2 or not 0 < prompt_length <= x.shape[1]:
        raise ValueError(f"prompt_length must be in [1, {x.shape[1] if x.ndim >= 2 else '?'}] "
                         f"for a tensor of shape {tuple(x.shape)}, got {prompt_length}")
    return x[:, prompt_length:]


def split_prompt_response(x: torch.Tensor, prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x[:, :P], x[:, P:]) for a (B, P + T, ...) prompt-then-response tensor."""
    resp = response_slice(x, prompt_length)
    return x[:, :prompt_length], resp


def response_logprobs(model, sequences, attention_mask, prompt_length: int, temperature: float = 1.0,
                      return_entropy: bool = False):
    """Teacher-forced log-probs (and entropies) of the response tokens only: (B, T) = the columns
    P.. of `sequence_logprobs`. 0 after the first EOS, where the attention mask is 0."""
    out = sequence_logprobs(model, sequences, attention_mask, temperature, return_entropy)
    if return_entropy:
        return response_slice(out[0], prompt_length), response_slice(out[1], prompt_length)
    return response_slice(out, prompt_length)


def sequence_sum(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence log-probability log pi(y | x) = sum_t mask_t * logprobs_t: (B, T), (B, T) -> (B,).
    With the response mask, this sums over the response tokens up to and including EOS."""
    check_tensor(logprobs, "logprobs", ndim=2, floating=True)
    return (logprobs * as_float_mask(mask, logprobs, "mask")).sum(-1)


def sequence_mean(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised sequence log-prob (1/|y|) sum_t mask_t * logprobs_t (SimPO's average):
    (B, T), (B, T) -> (B,). A row with an empty mask raises instead of returning NaN."""
    m = as_float_mask(mask, check_tensor(logprobs, "logprobs", ndim=2, floating=True), "mask")
    n = m.sum(-1)
    if bool((n == 0).any()):
        raise ValueError(f"sequence_mean got rows with no masked-in tokens: {torch.nonzero(n == 0).flatten().tolist()}")
    return (logprobs * m).sum(-1) / n


# ------------------------------------------------------------------------------ sampling


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Truncate a next-token distribution: logits (B, V) -> (B, V) with -inf outside the kept set.

    top_k keeps the k largest logits (ties at the k-th value are all kept). top_p (nucleus) keeps
    the smallest set of most likely tokens whose probability reaches top_p: token i (sorted by
    probability) is kept if the mass of the tokens before it is < top_p, so the top token always
    stays. Applied in that order, after temperature, as in `transformers`' sampling."""
    if top_k is not None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # (B, V) mass of strictly more likely tokens
        remove_sorted = mass_before >= top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Draw one token per row from softmax(filter_logits(logits / temperature)).

    logits: (B, V). Returns (tokens (B,), logprobs (B,)): the log-probability of each drawn token
    under the distribution it was actually drawn from (tempered and truncated, renormalised).
    temperature == 0 means greedy (argmax); then the log-prob reported is that of the untempered,
    untruncated softmax (the point mass greedy "samples" from would give 0 for every token)."""
    logits = _upcast(logits)
    if temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)  # (B, V)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # (B,)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


# ---------------------------------------------------------------------------- generation


@dataclass
class Generation:
    """The result of `generate` for B prompts of padded width P and T = max_new_tokens.

    sequences      (B, P + T) long   prompt ids (left-padded) then response ids (pad after EOS)
    attention_mask (B, P + T) long   prompt mask then response mask: feed both to sequence_logprobs
    response_ids   (B, T) long       = sequences[:, P:]
    response_mask  (B, T) long       1 on response tokens up to AND including the first EOS, 0 after
                                     (TRL's completion_mask convention); all 1 if no EOS was drawn
    logprobs       (B, T) float      log-prob of each response token under the distribution it was
                                     sampled from; 0 where response_mask is 0
    prompt_length  int               P
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    prompt_length: int

    @property
    def lengths(self) -> torch.Tensor:
        """Response lengths (B,) counting the EOS token."""
        return self.response_mask.sum(-1)


def _context_window(model):
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        if cfg is not None and isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    return None


def _check_generate_args(model, prompt_ids, prompt_mask, max_new_tokens, eos_token_id, pad_token_id,
                         temperature, top_k, top_p, generator):
    _check_ids_and_mask(prompt_ids, prompt_mask, "prompt_ids", "prompt_mask")
    if prompt_ids.shape[0] == 0 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must hold at least one prompt of at least one token, got shape {tuple(prompt_ids.shape)}")
    pm = prompt_mask.long()
    empty = (pm.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"prompt rows {empty} have no real tokens (all-zero prompt_mask); every prompt "
                         f"needs at least one token (e.g. a BOS) to condition on")
    if bool((pm[:, 1:] < pm[:, :-1]).any()):
        raise ValueError("prompts must be LEFT-padded (prompt_mask of the form 0..0 1..1 in every row), "
                         "so that all responses start at the same column; use minirl.lm.left_pad")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for name, tid in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if tid is None:
            raise ValueError(f"{name} is required (got None): generation needs an explicit {name}")
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0 or (vocab is not None and tid >= vocab):
            raise ValueError(f"{name} must be an int in [0, {vocab}), got {tid!r}")
    if vocab is not None and (int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= vocab):
        raise ValueError(f"prompt_ids must lie in [0, {vocab}), got range [{int(prompt_ids.min())}, {int(prompt_ids.max())}]")
    n_ctx = _context_window(model)
    if n_ctx is not None and prompt_ids.shape[1] + max_new_tokens > n_ctx:
        raise ValueError(f"prompt width {prompt_ids.shape[1]} + max_new_tokens {max_new_tokens} = "
                         f"{prompt_ids.shape[1] + max_new_tokens} exceeds the model's context window {n_ctx}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    filter_logits(torch.zeros(1, 2), top_k, top_p)  # validates top_k / top_p


@torch.no_grad()
def generate(model, prompt_ids, prompt_mask, max_new_tokens, eos_token_id, pad_token_id,
             temperature=1.0, top_k=None, top_p=None, generator=None, use_cache=True) -> Generation:
    """Sample responses for a batch of LEFT-padded prompts, one token per step for every row.

    prompt_ids, prompt_mask: (B, P), mask 1 on real tokens; every row needs >= 1 real token.
    Each step draws y_t ~ softmax(filter_logits(logits / temperature, top_k, top_p)) for every row
    (temperature 0 = greedy) with `generator` (pass a seeded torch.Generator for reproducible
    draws). A row ends at its first EOS; later columns hold pad_token_id and count nowhere. The loop
    stops when every row has ended, and the result is always padded to T = max_new_tokens columns.

    use_cache=True feeds only the newest token and reuses the attention keys/values of the prefix
    (the KV cache); use_cache=False reruns the whole prefix every step (same tokens, slower).
    The model runs in eval mode (dropout off) for the duration of the call, then is restored.
    Returns a `Generation` (see its docstring for shapes and masks).
    """
    _check_generate_args(model, prompt_ids, prompt_mask, max_new_tokens, eos_token_id, pad_token_id,
                         temperature, top_k, top_p, generator)
    B, P, T = prompt_ids.shape[0], prompt_ids.shape[1], max_new_tokens
    dev = prompt_ids.device
    attn = prompt_mask.long()  # (B, P + t): grows by one column per step
    response_ids = torch.full((B, T), pad_token_id, dtype=torch.long, device=dev)
    response_mask = torch.zeros((B, T), dtype=torch.long, device=dev)
    logprobs = None  # (B, T), allocated at the first step in the dtype of the logits
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    step_ids, step_pos = prompt_ids, position_ids_from_mask(attn)  # what the cached model sees next
    past = None
    was_training = model.training
    model.eval()
    try:
        for t in range(T):
            if use_cache:
                out = model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos,
                            past_key_values=past, use_cache=True)
                past = out.past_key_values
            else:
                seq = torch.cat([prompt_ids, response_ids[:, :t]], dim=1)  # (B, P + t)
                out = model(input_ids=seq, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                            use_cache=False)
            logits = _upcast(out.logits[:, -1])  # (B, V) next-token logits
            token, lp = sample_next_token(logits, temperature, top_k, top_p, generator)
            alive = ~finished  # rows still writing their response
            response_ids[:, t] = torch.where(alive, token, torch.full_like(token, pad_token_id))
            if logprobs is None:
                logprobs = torch.zeros((B, T), dtype=lp.dtype, device=dev)
            logprobs[:, t] = torch.where(alive, lp, torch.zeros_like(lp))
            response_mask[:, t] = alive.long()  # includes the EOS token itself
            finished = finished | (alive & (token == eos_token_id))
            step_pos = attn.sum(-1, keepdim=True)  # (B, 1) position of the new token = # real tokens so far
            attn = torch.cat([attn, alive.long()[:, None]], dim=1)
            step_ids = response_ids[:, t : t + 1]
            if bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return Generation(
        sequences=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask.long(), response_mask], dim=1),
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs,
        prompt_length=P,
    )
