"""The rehearsal world's hub: local, hub-shaped stand-ins for every hub id of config/paper.yaml.

`build_rehearsal_hub(out, seed)` writes, under `out`, one folder per hub id ("owner/name" as two
folder levels) so that a config whose ids point there runs the paper's workflow unchanged on a CPU:

- policies: `meta-llama/Llama-3.1-8B-Instruct` + `MergeBench/Llama-3.1-8B-Instruct_{math,coding}`
  (LlamaForCausalLM, GQA, llama3 RoPE, untied head, eos ids [end_of_text, eom, eot]);
  `google/gemma-2-2b-it` + `MergeBench/gemma-2-2b-it_{math,coding,instruction}` (Gemma2ForCausalLM,
  sliding-window layers, soft-capping, tied embeddings, `<bos>` added by the tokenizer). Experts are
  short fine-tunes of their instruct model; each coding expert appends a pad token (vocab + 1).
- reward models: `Ray2333/reward-model-Mistral-7B-instruct-Unified-Feedback` (Mistral) and
  `weqweasdas/RM-Gemma-2B` (Gemma-1), each with its own tokenizer, a few Bradley-Terry steps.
- datasets: `mlabonne/open-perfectblend`, `argilla/OpenHermesPreferences`, `openai/gsm8k` (main),
  `HuggingFaceH4/MATH-500`, `google-research-datasets/mbpp` (full), `google/IFEval`, and
  `openai/openai_humaneval`, in the hub schemas and layouts (`datasets.load_dataset(folder, config,
  split=...)` works as with the hub id), filled from `fusionroute.tiny.tasks`.

Modules: `settings` (names, sizes, steps), `build` (marker, atomic write; light imports),
`parts` (synthetic items, datasets, tokenizers, models), `tokenizer_files`, `checkpoints`,
`hub_datasets`. `rehearsal_manifest.json` in `out` records special-token ids, vocabulary sizes,
row counts, first/last training losses and timings.
CLI: `python -m fusionroute.rehearsal --out DIR [--seed 0] [--workers 1]`.
"""
from fusionroute.rehearsal.build import BUILDER_VERSION, MANIFEST, MARKER, build_rehearsal_hub, is_complete
from fusionroute.rehearsal.settings import (ALPACA, GEMMA_EXPERTS, GEMMA_INSTRUCT, GEMMA_RM, LLAMA_EXPERTS,
                                            LLAMA_INSTRUCT, MISTRAL_RM, RehearsalSettings, Shape, TrainSettings)

__all__ = ["ALPACA", "BUILDER_VERSION", "GEMMA_EXPERTS", "GEMMA_INSTRUCT", "GEMMA_RM", "LLAMA_EXPERTS",
           "LLAMA_INSTRUCT", "MANIFEST", "MARKER", "MISTRAL_RM", "RehearsalSettings", "Shape", "TrainSettings",
           "build_rehearsal_hub", "is_complete"]
