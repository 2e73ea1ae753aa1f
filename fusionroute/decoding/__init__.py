"""Greedy FusionRoute decoding (Eq. 1) and single-model greedy decoding.

At step t the router reads the prefix and gives routing logits ``w_t`` and its own next-token logits;
``e = argmax w_t``; the selected expert reads the prefix; the next token is
``argmax(log_softmax(router_logits) + log_softmax(expert_e_logits))``. With ``use_complementary=False``
(the routing-only ablation of Table 2) the selected expert's log-probs alone decide the token.

Modules:

- ``cache``: the per-row KV cache (``_RowCache``) the batched decoders keep for every model, and the
  model calls it runs.
- ``decoders``: the production decoders, exported here. ``fused_generate`` (router on every row,
  each expert only on the rows that selected it, with lazy prefill and catch-up chunks) and
  ``greedy_generate`` (one model: an expert, the fine-tuned model, a merge); both batched with left
  padding and KV caches, sharing one loop (``_decode_rows``).
- ``oracles``: for the tests and scripts/bench_decoding.py only, never imported by the library:
  ``reference_fused_generate`` / ``reference_greedy_generate`` (one row at a time, no cache, the
  full prefix recomputed each step) and ``naive_fused_generate`` (every expert on every row at
  every step: the speed baseline). All decoders give the same tokens and expert ids.

Conventions:

- ``pad_token_id`` only fills masked slots (``None``: 0).
- ``token_ids`` are the emitted tokens; a row that stops on an end id ends with that token (it
  was emitted, selected an expert and cost forwards). ``eos_token_id`` is one id or several (every
  end id of the models' generation_config: ``<|eot_id|>``, ``<end_of_turn>``, ...); None: no stop.
- ``vocab_size``: the shared id range (``fusionroute.vocab``); logits beyond it are masked (sliced
  off) for every model. None: every model must produce logits of one width.
- ``forwards`` counts model invocations that processed this row: every router call and every
  expert call (prefill and catch-up chunks included) whose batch contained the row. Comparable
  across methods as "model forwards per emitted token" = ``forwards / len(token_ids)``.
- All models must share one vocabulary: the logits' vocab dimension is checked (``ValueError``).
  Token-for-token identity of the shared range is the ExpertPool's check (``fusionroute.vocab``).
"""
from __future__ import annotations

from fusionroute.decoding.decoders import (
    FusedOutput,
    check_shared_vocab,
    combine_scores,
    fused_generate,
    greedy_generate,
)

__all__ = [
    "FusedOutput",
    "fused_generate",
    "greedy_generate",
    "check_shared_vocab",
    "combine_scores",
]
