"""Workflow steps of workflow/rules/judge.smk: the pairwise judge and Figures 3 and 4.

- `general_prompts`: the judge's "general" prompt set, results/<world>/data/general.jsonl, records
  {"id", "instruction", "reference"}: tiny world = held-out items of the five synthetic benchmarks
  with ground truth (fusionroute.tiny.general); hub worlds = the SFT mix's test hold-out
  (PerfectBlend in the paper), reference None.
- `judge`: one method's generations on "general" against the comparison model's (the fine-tuned
  model), both orders, through `fusionroute.eval.judge.judge_pairs`; the backend comes from the
  config's `judge` block (VerifierJudge offline, OpenAIJudge for any OpenAI-compatible endpoint).
- `figure`: Figure 3 or 4 from the judge results (fusionroute.eval.figures).
"""
from __future__ import annotations

from typing import Any

from fusionroute.io import read_jsonl, write_jsonl
from fusionroute.steps import step

# Keys of the config's judge.openai block that OpenAIJudge accepts (the rest are workflow settings).
OPENAI_KEYS = ("model", "base_url", "model_env", "base_url_env", "api_key_env", "temperature", "max_tokens",
               "timeout_s", "http_retries", "backoff_s", "max_backoff_s", "system_prompt", "seed")


@step
def general_prompts(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    if params["source"] == "tiny":
        from fusionroute.tiny.general import make_general

        rows = make_general(params["n"], params["seed"], params["evaluated"], level=params.get("level"))
    else:
        from fusionroute.hub_data import general_from_holdout

        rows = general_from_holdout(read_jsonl(inputs["holdout"]), params["n"])
        if not rows:
            raise ValueError(f"{inputs['holdout']} is empty: set training_data.sft.test_holdout > 0")
    write_jsonl(outputs["data"], rows)


def build_judge(settings: dict):
    """The judge backend for the config's `judge` settings ({"backend", "openai", "verifier"})."""
    from fusionroute.eval.judge import make_judge

    backend = settings.get("backend", "verifier")
    if backend == "openai":
        cfg = {k: v for k, v in (settings.get("openai") or {}).items() if k in OPENAI_KEYS and v is not None}
        return make_judge({"backend": "openai", **cfg})
    return make_judge({"backend": backend, **(settings.get("verifier") or {})})


def judge_items(general: list[dict], gens_a: str, gens_b: str) -> list[dict]:
    """Pair the two methods' answers by id; the judge sees the raw instruction (not the templated
    prompt) and, where the general set has one, the reference. A method run on a prefix of the
    general set (Collab's `limit`) is judged on the ids both answered."""
    from fusionroute.eval.judge import items_from_generations

    questions = {str(r["id"]): r["instruction"] for r in general}
    references = {str(r["id"]): r["reference"] for r in general if r.get("reference")}
    items = items_from_generations(gens_a, gens_b, questions=questions, references=references or None, strict=False)
    if not items:
        raise ValueError(f"{gens_a} and {gens_b} share no ids")
    return items


@step
def judge(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from fusionroute.eval.judge import judge_pairs

    settings = params["judge"]
    items = judge_items(read_jsonl(inputs["general"]), inputs["a"], inputs["b"])
    result = judge_pairs(build_judge(settings), items, out_path=outputs["result"],
                         malformed_retries=settings.get("malformed_retries", 2),
                         workers=settings.get("workers", 4),
                         label={"a": params["method"], "b": params["against"], "family": params["family"]})
    print(f"{params['family']}: {params['method']} vs {params['against']}: win_rate={result['win_rate']} "
          f"(wins {result['wins']}, ties {result['ties']}, losses {result['losses']}, "
          f"malformed {result['malformed']})")


@step
def figure(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from fusionroute.eval.figures import make_figure

    # inputs are named "<family>__<method>"; params["methods"] fixes the bar order.
    results: dict[str, dict[str, Any]] = {}
    for key, path in inputs.items():
        family, method = key.split("__", 1)
        results.setdefault(family, {})[method] = path
    results = {f: results[f] for f in params["families"] if f in results}
    kwargs: dict[str, Any] = {"methods": list(params["methods"]), "labels": params.get("labels") or {}}
    if params.get("title"):
        kwargs["title"] = params["title"]
    make_figure(params["kind"], results, outputs["pdf"], **kwargs)
