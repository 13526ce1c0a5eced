"""Models: the tiny GPT-2, loading a policy from the hub or a local folder, scalar heads.

Derived in notebooks/03 (the tiny GPT-2 and its checkpoints); the scalar head is used by
notebooks/05 (reward model: one score per sequence, read at the last real token) and
notebooks/08 (critic: one value per token).

    tiny_gpt2_config(vocab_size, ...)   a transformers GPT2Config: 2 layers, width 96, 128 positions,
                                        no dropout (RL needs log-probs that do not change between
                                        two calls on the same tokens)
    tiny_gpt2(tokenizer, seed, ...)     a freshly initialised GPT2LMHeadModel, seeded
    load_policy(name_or_dir)            -> (model, tokenizer); a local folder (data/tiny-sft) or a hub id
                                        ("gpt2"); fails within seconds, with a message saying what to
                                        do, when the hub cannot be reached or HF_HUB_OFFLINE=1 and the
                                        id is not cached; checks the tokenizer has EOS and PAD
    save_checkpoint(model, tok, path)   save_pretrained of both (+ samples.json), without progress bars
    ScalarHeadModel(backbone)           backbone (e.g. GPT2Model) + Linear(n_embd, 1): values (B, T)
    last_token_scores(values, mask)     the value at each row's last real token (left or right padding)

The shipped checkpoints live in data/tiny-pretrained/ and data/tiny-sft/ (`TINY_SFT_DIR`).
"""
from __future__ import annotations

import copy
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .checks import as_float_mask, check_tensor
from .lm import position_ids_from_mask
from .paths import DATA_DIR
from .tokenizer import check_special_tokens

TINY_PRETRAINED_DIR = DATA_DIR / "tiny-pretrained"
TINY_SFT_DIR = DATA_DIR / "tiny-sft"
HEAD_FILE = "scalar_head.safetensors"
HEAD_CONFIG = "scalar_head.json"
SAMPLES_FILE = "samples.json"


class HubUnavailableError(OSError):
    """The Hugging Face hub cannot be used (offline, unreachable) and the model is not cached."""


def tiny_gpt2_config(vocab_size: int, n_layer: int = 2, n_embd: int = 96, n_head: int = 4,
                     n_positions: int = 128, eos_token_id: int = 0, pad_token_id: int = 1):
    """A GPT2Config for a tiny model (about 0.3M parameters at the defaults with 671 tokens).

    All dropouts are 0: sampling and scoring must see the same function. The GPT-2 names are kept
    (n_layer, n_embd, n_head, n_positions) so that the same code runs on GPT-2 124M.
    """
    from transformers import GPT2Config

    for name, v in (("vocab_size", vocab_size), ("n_layer", n_layer), ("n_embd", n_embd),
                    ("n_head", n_head), ("n_positions", n_positions)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd must be divisible by n_head, got n_embd={n_embd}, n_head={n_head}")
    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos_token_id,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, tie_word_embeddings=True,
    )


def tiny_gpt2(tokenizer, seed: int = 0, **config_kwargs):
    """A freshly initialised GPT2LMHeadModel sized to `tokenizer` (len(tokenizer) tokens), with
    its EOS/PAD ids, initialised under `torch.manual_seed(seed)` (the global RNG is restored)."""
    from transformers import GPT2LMHeadModel

    check_special_tokens(tokenizer)
    cfg = tiny_gpt2_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    _set_generation_ids(model, tokenizer)
    return model


@contextmanager
def quiet_transformers():
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") inside
    the block: they go to stderr, which nbval compares. Restores the previous setting."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_checkpoint(model, tokenizer, path, samples: list | None = None) -> Path:
    """`save_pretrained` the model and the tokenizer into `path` (quietly); with `samples`
    (a list of JSON-able dicts, e.g. greedy decodes of fixed prompts), also write them to
    path/samples.json so that a test can check the checkpoint reproduces them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    if samples is not None:
        (path / SAMPLES_FILE).write_text(json.dumps(samples, indent=1, sort_keys=True) + "\n")
    return path


def _set_generation_ids(model, tokenizer) -> None:
    if getattr(model, "loss_type", "") is None:  # GPT2LMHeadModel's class name maps to no loss:
        model.loss_type = "ForCausalLM"           # name it, so `labels=` does not log a warning
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    gc = getattr(model, "generation_config", None)
    if gc is not None:
        gc.eos_token_id = tokenizer.eos_token_id
        gc.pad_token_id = tokenizer.pad_token_id
        gc.bos_token_id = tokenizer.eos_token_id


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub endpoint (HF_ENDPOINT, default huggingface.co:443)
    opens within `timeout` seconds. Does not download anything."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and not _is_hub_id(name)


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)


def load_policy(name_or_dir, *, device="cpu", dtype=None, pad_as_eos: bool = False, timeout: float = 3.0):
    """Load a causal LM and its tokenizer -> (model, tokenizer), model in eval mode on `device`.

    name_or_dir: a local folder written by `save_pretrained` (e.g. `TINY_SFT_DIR`, or the string
        "data/tiny-sft", resolved against the repo root if it is not found from the working
        directory), or a hub id such as "gpt2".
    Hub ids: with HF_HUB_OFFLINE=1 only the local cache is tried; otherwise the hub endpoint
        must accept a connection within `timeout` seconds, else the cache is tried. Either way, a
        model that cannot be had raises `HubUnavailableError` at once, saying to pass a local
        folder instead.
    dtype: the parameters' dtype; default `torch.get_default_dtype()`.
    pad_as_eos: GPT-2's hub tokenizer has no PAD token. By default that raises ValueError; with
        pad_as_eos=True the PAD is set to EOS (then a padded position and a generated EOS share an
        id, so masks, not ids, must mark padding, which is how minirl works anyway).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_dir)
    path = Path(name).expanduser()
    if not path.is_dir() and not path.is_absolute() and (DATA_DIR.parent / name).is_dir():
        path = DATA_DIR.parent / name
    # Without an explicit dtype the weights load in torch's default dtype: the CPU lessons set it to
    # float64 (portable outputs, see CONTRIBUTING.md), GPU scripts keep float32 and autocast.
    kwargs = {"dtype": torch.get_default_dtype() if dtype is None else dtype}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{name} is a folder without config.json: not a saved model (expected a save_pretrained folder)")
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    elif _looks_like_path(name) or not _is_hub_id(name):
        raise ValueError(f"{name!r} is neither an existing folder nor a hub id like 'gpt2' or 'owner/name'")
    else:
        local_only = _offline() or not hub_reachable(timeout)
        why = "HF_HUB_OFFLINE=1" if _offline() else f"the hub did not answer within {timeout:g} s"
        try:
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(name, local_files_only=local_only, **kwargs)
                tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        except OSError as e:
            if not local_only:
                raise
            raise HubUnavailableError(
                f"cannot load {name!r}: {why} and it is not in the local cache. Pass a local folder "
                f"instead, e.g. load_policy('data/tiny-sft') (the course's tiny model), or run where "
                f"the hub is reachable once to cache it."
            ) from e
    if pad_as_eos and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    check_special_tokens(tokenizer)
    _set_generation_ids(model, tokenizer)
    model.to(device)
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------- scalar heads
def last_token_scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """values (B, T), attention_mask (B, T) with 1 on real tokens -> (B,) the value at each row's
    LAST real token. Works for right padding (1..1 0..0) and left padding (0..0 1..1) alike: the
    index is found from the mask, never assumed to be T-1 or sum(mask)-1."""
    check_tensor(values, "values", ndim=2)
    m = as_float_mask(attention_mask, values, "attention_mask")
    if bool((m.sum(-1) == 0).any()):
        raise ValueError("every row of attention_mask needs at least one real token (a 1)")
    T = values.shape[1]
    pos = torch.arange(T, device=values.device).expand_as(values)  # (B, T)
    last = torch.where(m > 0, pos, torch.full_like(pos, -1)).max(-1).values  # (B,)
    return values.gather(1, last[:, None]).squeeze(1)


class ScalarHeadModel(nn.Module):
    """A transformer backbone with a linear head giving one scalar per token.

    backbone: a base transformer returning `last_hidden_state` (B, T, n_embd), e.g. GPT2Model or
        `causal_lm.transformer` (use `ScalarHeadModel.from_causal_lm` to copy one from a policy).
    forward(input_ids, attention_mask) -> values (B, T): the head on every position's hidden
        state, position ids counted over real tokens only (left padding safe). Values at padded
        positions are set to 0. A critic reads all of them; a reward model reads
        `last_token_scores(values, attention_mask)`.
    Head init: weights ~ N(0, 1/(n_embd + 1)), bias 0 (lm-human-preferences' reward head),
        drawn from a generator seeded with `seed`.
    """

    def __init__(self, backbone: nn.Module, seed: int = 0):
        super().__init__()
        n_embd = getattr(backbone.config, "n_embd", None) or backbone.config.hidden_size
        self.backbone = backbone
        self.config = backbone.config
        self.head = nn.Linear(n_embd, 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(1, n_embd, generator=g) / (n_embd + 1) ** 0.5)
            self.head.bias.zero_()

    @classmethod
    def from_causal_lm(cls, model, seed: int = 0) -> "ScalarHeadModel":
        """A scalar-head model whose backbone is a COPY of the causal LM's transformer."""
        return cls(copy.deepcopy(model.base_model), seed=seed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        check_tensor(input_ids, "input_ids", ndim=2)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # (B, T, C)
        values = self.head(h).squeeze(-1)  # (B, T)
        return values * attention_mask.to(values.dtype)

    def save_pretrained(self, path) -> Path:
        """Backbone via its own save_pretrained, head in scalar_head.safetensors (+ a small json)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.backbone.save_pretrained(str(path))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(path / HEAD_FILE))
        (path / HEAD_CONFIG).write_text(json.dumps({"n_embd": self.head.in_features, "class": "ScalarHeadModel"}) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path, seed: int = 0) -> "ScalarHeadModel":
        """Load a saved ScalarHeadModel; or, from a causal-LM folder (data/tiny-sft), its backbone
        with a fresh head initialised with `seed` (how a reward model or critic starts). Weights load
        in torch's default dtype."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForCausalLM

        path = Path(path)
        if not (path / "config.json").exists():
            raise ValueError(f"{path.name} has no config.json: expected a save_pretrained folder")
        if (path / HEAD_FILE).exists():
            with quiet_transformers():
                backbone = AutoModel.from_pretrained(str(path), local_files_only=True,
                                                     dtype=torch.get_default_dtype())
            model = cls(backbone, seed=seed)
            model.head.load_state_dict(load_file(str(path / HEAD_FILE)))
            return model
        with quiet_transformers():
            lm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                      dtype=torch.get_default_dtype())
        return cls(lm.base_model, seed=seed)
