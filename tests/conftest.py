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
