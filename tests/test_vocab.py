"""The shared-vocabulary policy (fusionroute.vocab) and decoding that stops on every end id.

Policy: the shared id range must map token for token; ids outside it (an appended pad token, an
output layer padded beyond the tokenizer) are masked from every model's distribution; an eos that
differs between models is a generation setting, not an error.
"""
from __future__ import annotations

import copy

import pytest
import torch
from model_fixtures import make_llama

from fusionroute.decoding import fused_generate, greedy_generate
from fusionroute.decoding.oracles import reference_fused_generate
from fusionroute.experts import ExpertPool
from fusionroute.router import RouterModel
from fusionroute.vocab import VocabularyMismatch, end_token_ids, shared_vocabulary

EXTRA = "<|finetune_pad|>"


def with_appended_pad(model, tokenizer):
    """What a fine-tuning recipe does: add a pad token (id V) and grow the embeddings by one row,
    whose output logit a hook makes overwhelmingly large so that an unmasked decoder would emit it."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"pad_token": EXTRA})
    grown = copy.deepcopy(model)
    grown.resize_token_embeddings(len(tok), mean_resizing=False)

    def boost_last_id(module, args, output):
        output = output.clone()
        output[..., -1] += 1000.0
        return output

    grown.get_output_embeddings().register_forward_hook(boost_last_id)
    return grown, tok


def prompts(tokenizer):
    texts = ["### Instruction:\nTom has 3 apples.", "### Instruction:\nWrite a function add_two(x)"]
    return [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_appended_pad_token_is_masked_not_fatal(tokenizer, tmp_path):
    base = make_llama(tokenizer, 1)
    grown, grown_tok = with_appended_pad(base, tokenizer)
    assert len(grown_tok) == len(tokenizer) + 1
    vocab = shared_vocabulary(tokenizer, {"coding": grown_tok, "math": None}, {"coding": grown, "math": base})
    assert vocab.size == len(tokenizer) and vocab.masked == {"coding": 1, "math": 0}
    # without the mask the grown model emits the pad id at every step; with it, exactly what the
    # model without the extra row emits
    unmasked = greedy_generate(grown, prompts(tokenizer), 4, None, tokenizer.pad_token_id)
    assert all(set(row) == {len(tokenizer)} for row in unmasked)
    masked = greedy_generate(grown, prompts(tokenizer), 6, None, tokenizer.pad_token_id, vocab_size=vocab.size)
    assert masked == greedy_generate(base, prompts(tokenizer), 6, None, tokenizer.pad_token_id)

    # the pool applies the policy to saved checkpoints, each with its own tokenizer
    for name, (model, tok) in {"math": (base, tokenizer), "coding": (grown, grown_tok)}.items():
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    pool = ExpertPool.load(["math", "coding"], [str(tmp_path / "math"), str(tmp_path / "coding")], str(tmp_path / "math"))
    assert pool.vocab.size == len(tokenizer)


def test_fused_decoding_masks_ids_outside_the_shared_range(tokenizer):
    router = RouterModel.from_lm(make_llama(tokenizer, 3), ["math", "coding"], seed=0)
    math, coding = make_llama(tokenizer, 4), make_llama(tokenizer, 5)
    grown, _ = with_appended_pad(coding, tokenizer)
    with pytest.raises(ValueError, match="router vocab size"):
        fused_generate(router, [math, grown], prompts(tokenizer), 4, None, tokenizer.pad_token_id)
    size = len(tokenizer)
    fast = fused_generate(router, [math, grown], prompts(tokenizer), 6, None, tokenizer.pad_token_id, vocab_size=size)
    oracle = reference_fused_generate(router, [math, grown], prompts(tokenizer), 6, None, None, vocab_size=size)
    plain = fused_generate(router, [math, coding], prompts(tokenizer), 6, None, tokenizer.pad_token_id)
    assert [o.token_ids for o in fast] == [o.token_ids for o in oracle] == [o.token_ids for o in plain]
    assert all(t < size for o in fast for t in o.token_ids)


def test_a_differing_id_inside_the_shared_range_is_refused(tokenizer):
    other = copy.deepcopy(tokenizer)
    # swap two tokens' ids: same size, same tokens, different mapping
    vocab = other.get_vocab()
    a, b = "Tom", "cats"
    assert a in vocab and b in vocab
    state = other.backend_tokenizer.to_str()
    import json

    blob = json.loads(state)
    blob["model"]["vocab"][a], blob["model"]["vocab"][b] = vocab[b], vocab[a]
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(blob)),
                                      bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
                                      pad_token=tokenizer.pad_token)
    model = make_llama(tokenizer, 1)
    with pytest.raises(VocabularyMismatch, match=rf"'coding': 2 of the {len(tokenizer)} shared ids.*id {min(vocab[a], vocab[b])}"):
        shared_vocabulary(tokenizer, {"coding": swapped}, {"coding": model})


def test_eos_mismatch_alone_is_not_fatal_and_every_end_id_stops(tokenizer):
    instruct = make_llama(tokenizer, 1)
    base = make_llama(tokenizer, 2)
    eot = tokenizer.convert_tokens_to_ids("Tom")  # stands in for <|eot_id|>
    instruct.generation_config.eos_token_id = [tokenizer.eos_token_id, eot]
    base.config.eos_token_id = tokenizer.pad_token_id  # a base model ending on another id
    base.generation_config.eos_token_id = tokenizer.pad_token_id
    vocab = shared_vocabulary(tokenizer, {"instruct": None, "base": None}, {"instruct": instruct, "base": base})
    assert set(vocab.stop_ids) == {tokenizer.eos_token_id, eot, tokenizer.pad_token_id}
    assert end_token_ids(instruct, tokenizer) == sorted({tokenizer.eos_token_id, eot})

    # decoding stops on any id of the set (first run free, then stop on the first token it emitted)
    free = greedy_generate(instruct, prompts(tokenizer), 5, None, tokenizer.pad_token_id)
    stops = [free[0][2], 10**6]
    stopped = greedy_generate(instruct, prompts(tokenizer), 5, stops, tokenizer.pad_token_id)
    assert stopped[0] == free[0][: free[0].index(stops[0]) + 1]
