"""Shared fixtures: a real (small) BPE tokenizer and tiny random Llama models."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("FUSIONROUTE_NO_PROGRESS", "1")

CORPUS = [
    "### Instruction:\nTom has 3 apples. He buys 4 more. How many apples does Tom have?\n\n### Response:\n"
    "Tom has 3 apples. 3 + 4 = 7. The answer is: 7",
    "### Instruction:\nWrite a function add_two(x) that returns x plus 2.\n\n### Response:\n"
    "```python\ndef add_two(x):\n    return x + 2\n```",
    "### Instruction:\nWrite about cats in lowercase letters.\n\n### Response:\ncats are small. cats like to sleep.",
] * 20


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from fusionroute.tiny.tokenizer import train_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    train_tokenizer(CORPUS, vocab_size=320, out_dir=directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from fusionroute.models import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))
