"""generation.max_prompt_tokens: over-long prompts lose the middle of their instruction, so one long
judge prompt cannot run a decoding batch out of memory (and the planner can size decoding for it)."""
from __future__ import annotations

import pytest

from fusionroute.data import fit_instruction, render_prompt
from fusionroute.methods import encode_prompts

TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


def _prompt_tokens(tokenizer, instruction: str) -> int:
    return len(encode_prompts(tokenizer, [render_prompt(TEMPLATE, instruction)])[0])


def test_short_instruction_is_unchanged(tokenizer):
    text = "Tom has 3 apples. He buys 4 more. How many apples does Tom have?"
    limit = _prompt_tokens(tokenizer, text)
    assert fit_instruction(tokenizer, TEMPLATE, text, limit) == (text, False)


@pytest.mark.parametrize("limit", [40, 64, 100])
def test_long_instruction_keeps_head_and_tail_within_the_limit(tokenizer, limit):
    head, tail = "Write about cats in lowercase letters.", "How many apples does Tom have?"
    text = head + " " + "Tom has 3 apples and buys 4 more. " * 40 + tail
    assert _prompt_tokens(tokenizer, text) > limit
    fitted, cut = fit_instruction(tokenizer, TEMPLATE, text, limit)
    assert cut and " [...] " in fitted
    assert _prompt_tokens(tokenizer, fitted) <= limit
    assert fitted.startswith("Write about") and fitted.endswith("have?")
    # no more is cut than needed: the result uses most of the budget
    assert _prompt_tokens(tokenizer, fitted) >= limit - 24


def test_limit_below_the_template_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="max_prompt_tokens = 8 leaves no room"):
        fit_instruction(tokenizer, TEMPLATE, "Tom has 3 apples. " * 10, 8)


def test_generate_step_cuts_and_says_so(tokenizer_dir, capsys):
    from fusionroute.steps.evaluate import _fit_instructions

    texts = ["Write about cats.", "Tom has 3 apples and buys 4 more. " * 60]
    out = _fit_instructions(str(tokenizer_dir), TEMPLATE, texts, 48)
    assert out[0] == texts[0] and " [...] " in out[1]
    assert "1 of 2 prompt(s) over generation.max_prompt_tokens = 48 tokens" in capsys.readouterr().out
