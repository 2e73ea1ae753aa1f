"""Fixtures for the baseline tests: a tiny BPE tokenizer and tiny Llama models saved to tmp dirs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from baseline_helpers import build_tokenizer

os.environ.setdefault("FUSIONROUTE_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tok_dir):
    from fusionroute.models import load_tokenizer

    return load_tokenizer(str(tok_dir))

