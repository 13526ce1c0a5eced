"""Shared fixtures for the unit tests."""
import pytest

from minirl.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    """The shipped tiny-world tokenizer (data/tokenizer), loaded fresh for each test module."""
    return load_tokenizer()


@pytest.fixture
def float64_default():
    """Run a test with torch's default dtype set to float64, as the CPU lessons do (lesson 03,
    "Why float64"), and restore the previous default afterwards."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.fixture(scope="module")
def trl_tiny():
    """What the TRL parity tests (test_trl_parity, test_trl_grpo_parity) build their trainers on:
    a random 1-layer GPT-2 (`model`, and a second one `ref`, after torch.manual_seed(0)) and a
    word-level tokenizer over a 7-word vocabulary, with `model` and the tokenizer saved to a
    temporary folder `path` (TRL loads the reference from the policy's path when beta > 0; `outdir`
    is the same folder, for trainer outputs). Nothing is downloaded; TRL's and datasets' logging
    and progress bars are quiet while it lives. Imports happen here, so that modules without TRL
    never load it."""
    import tempfile
    from types import SimpleNamespace

    import torch
    from datasets.utils import logging as ds_logging
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # TRL's dataset preparation logs and shows bars; quiet here
    ds_logging.disable_progress_bar()
    words = ["<pad>", "<eos>", "a", "b", "c", "good", "bad"]
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wl, pad_token="<pad>", eos_token="<eos>")
    config = GPT2Config(vocab_size=len(words), n_positions=16, n_embd=8, n_layer=1, n_head=2, bos_token_id=1,
                        eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model, ref = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    try:
        with tempfile.TemporaryDirectory(prefix="minirl_trl_") as d:
            model.save_pretrained(d)
            tokenizer.save_pretrained(d)
            yield SimpleNamespace(model=model, ref=ref, tokenizer=tokenizer, path=d, outdir=d)
    finally:
        hf_logging.set_verbosity(verbosity)
        ds_logging.enable_progress_bar()
