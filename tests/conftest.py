"""Shared fixtures for the unit tests."""
import pytest

from minirl.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    """The shipped tiny-world tokenizer (data/tokenizer), loaded fresh for each test module."""
    return load_tokenizer()
