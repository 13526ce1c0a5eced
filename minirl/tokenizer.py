"""The course tokenizer: a byte-level BPE trained on the world's text, and batch encoders.

Derived in notebooks/03. `load_tokenizer()` reads the shipped copy in data/tokenizer/ through
`AutoTokenizer.from_pretrained`, exactly as a hub tokenizer would be read.

Choices (stated once, relied on everywhere):
- byte-level BPE (any string encodes, nothing is unknown), digits split one per token so that
  numbers are spelled digit by digit, vocabulary at most `VOCAB_SIZE` = 768 (the world's
  text runs out of pairs seen twice earlier: the shipped tokenizer has 671 tokens, `len(tok)`);
- EOS = "<|endoftext|>" (id 0) ends every document and every response; PAD = "<|pad|>" (id 1) is a
  DISTINCT token, never a real one, so a pad can never be mistaken for an EOS the model produced.
  Masks still decide what counts: no code relies on the pad id to find padding;
- no BOS: like GPT-2, a sequence starts with its first real token;
- `padding_side` defaults to "right" (training). Generation pads prompts on the LEFT
  (`encode_prompts`), so that every prompt ends where the response starts.

Encoders return torch tensors:
    encode_documents(tok, texts, max_len)            -> input_ids, attention_mask (B, T)
    encode_prompt_response(tok, prompts, responses)  -> input_ids, attention_mask, response_mask
    encode_prompts(tok, prompts)                     -> input_ids, attention_mask, left-padded
"""
from __future__ import annotations

from pathlib import Path

import torch

from .lm import left_pad, right_pad
from .paths import DATA_DIR

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
VOCAB_SIZE = 768
MODEL_MAX_LENGTH = 128
TOKENIZER_DIR = DATA_DIR / "tokenizer"


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE on `texts` (an iterable of str); return a PreTrainedTokenizerFast
    with EOS and a distinct PAD set. Deterministic for the same texts and vocab_size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of str")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise ValueError(f"vocab_size must be at least {len(alphabet) + 2} (bytes + EOS + PAD), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN], initial_alphabet=alphabet,
        min_frequency=2, show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        model_max_length=MODEL_MAX_LENGTH, padding_side="right", clean_up_tokenization_spaces=False,
    )


def world_training_texts(seed: int = 0) -> list[str]:
    """The text the course tokenizer is trained on: reviews, worked arithmetic, instructions."""
    from . import world

    docs = world.pretraining_corpus(4000, 1000, seed=seed)
    docs += [p["prompt"] + p["response"] for p in world.instruction_pairs(1000, seed=seed)]
    return docs


def build_tokenizer(vocab_size: int = VOCAB_SIZE, seed: int = 0):
    """Train the course tokenizer from the world's text (what data/tokenizer/ holds)."""
    return train_tokenizer(world_training_texts(seed), vocab_size=vocab_size)


def check_special_tokens(tokenizer) -> None:
    """Raise ValueError unless `tokenizer` has an EOS and a PAD token."""
    missing = [n for n in ("eos_token_id", "pad_token_id") if getattr(tokenizer, n, None) is None]
    if missing:
        raise ValueError(
            f"the tokenizer has no {' and no '.join(m[:-9].upper() for m in missing)} token; "
            "set them before use (e.g. tokenizer.pad_token = tokenizer.eos_token for GPT-2, knowing "
            "that a masked pad then looks like EOS), or pass a local dir such as data/tiny-sft"
        )


def load_tokenizer(path=TOKENIZER_DIR):
    """Load a saved tokenizer with `AutoTokenizer.from_pretrained` (offline) and check EOS/PAD."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise ValueError(f"no tokenizer.json in {path}; build one with minirl.tokenizer.build_tokenizer()")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    check_special_tokens(tok)
    return tok


def _pad(rows: list[list[int]], pad_id: int, side: str):
    return left_pad(rows, pad_id) if side == "left" else right_pad(rows, pad_id)


def _check_side(side):
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")


def encode_documents(tokenizer, texts, max_len: int = 96, add_eos: bool = True, padding_side: str = "right"):
    """Tokenize whole documents for language-model training.

    Returns input_ids (B, T) and attention_mask (B, T) (1 on real tokens), T = longest document
    (at most `max_len`; longer documents are cut, keeping their start). With `add_eos` every
    document ends in EOS (unless cut), so the model learns to stop.
    """
    check_special_tokens(tokenizer)
    _check_side(padding_side)
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of str")
    rows = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if add_eos:
            ids = ids + [tokenizer.eos_token_id]
        rows.append(ids[:max_len])
    return _pad(rows, tokenizer.pad_token_id, padding_side)


def encode_prompt_response(tokenizer, prompts, responses, max_len: int = 96, add_eos: bool = True,
                           padding_side: str = "right"):
    """Tokenize (prompt, response) pairs for SFT, reward models and DPO.

    Prompt and response are tokenized SEPARATELY and concatenated (so the boundary is exact; a
    response should start with a space, as the world's do). Returns a dict with input_ids,
    attention_mask and response_mask, all (B, T): response_mask is 1 exactly on the response's
    tokens (its EOS included), 0 on the prompt and on padding. Pairs longer than `max_len` lose
    the end of their response.
    """
    check_special_tokens(tokenizer)
    _check_side(padding_side)
    if len(prompts) != len(responses) or len(prompts) == 0:
        raise ValueError(f"prompts and responses must be non-empty lists of equal length, got {len(prompts)} and {len(responses)}")
    rows, resp = [], []
    for p, r in zip(prompts, responses):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else [])
        if len(p_ids) >= max_len:
            raise ValueError(f"a prompt has {len(p_ids)} tokens, max_len is {max_len}: nothing left for the response")
        ids = (p_ids + r_ids)[:max_len]
        rows.append(ids)
        resp.append([0] * len(p_ids) + [1] * (len(ids) - len(p_ids)))
    input_ids, attention_mask = _pad(rows, tokenizer.pad_token_id, padding_side)
    response_mask, _ = _pad(resp, 0, padding_side)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def encode_prompts(tokenizer, prompts, padding_side: str = "left"):
    """Tokenize prompts for generation, LEFT-padded by default (every prompt ends at the last
    column, where generation continues). Returns input_ids, attention_mask (B, T)."""
    check_special_tokens(tokenizer)
    _check_side(padding_side)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of str")
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must have at least one token")
    return _pad(rows, tokenizer.pad_token_id, padding_side)
