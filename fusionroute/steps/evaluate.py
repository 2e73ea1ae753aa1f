"""Workflow steps of workflow/rules/evaluate.smk: benchmark data, generation, scoring."""
from __future__ import annotations

import importlib
from pathlib import Path

from fusionroute.io import read_jsonl, write_json, write_jsonl
from fusionroute.steps import step
from fusionroute.steps.common import model_files, seed_everything


@step
def benchmark_data(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """The evaluation records of one benchmark, in the real dataset's schema, with ids."""
    name, n, seed = params["benchmark"], params["n"], params["seed"]
    if params["source"] == "tiny":
        from fusionroute.tiny import tasks

        records = tasks.make_benchmark(name, n, seed, level=params.get("level"))
        from fusionroute.eval.benchmarks import load_records

        tmp = Path(outputs["data"]).with_suffix(".raw.jsonl")
        write_jsonl(tmp, records)
        records = load_records(name, data_path=str(tmp), hub_id=None, n=None, seed=seed)
        tmp.unlink()
    else:
        from fusionroute.eval.benchmarks import load_records

        records = load_records(name, data_path=params.get("data_path"), hub_id=params.get("hub_id"), n=n, seed=seed)
    write_jsonl(outputs["data"], records)


def _fit_instructions(tokenizer_source: str, template: str, instructions: list[str], limit: int) -> list[str]:
    """Cut over-long prompts (generation.max_prompt_tokens) so one long prompt cannot run a decoding
    batch out of memory; says how many were cut."""
    from transformers import AutoTokenizer

    from fusionroute.data import fit_instruction

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    fitted = [fit_instruction(tokenizer, template, text, limit) for text in instructions]
    cut = sum(was_cut for _, was_cut in fitted)
    if cut:
        print(f"[generate] {cut} of {len(instructions)} prompt(s) over generation.max_prompt_tokens = {limit} tokens: "
              f"the middle of their instruction is cut (marked ' [...] ')", flush=True)
    return [text for text, _ in fitted]


@step
def generate(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    from fusionroute.data import render_prompt
    from fusionroute.eval.benchmarks import instruction_for
    from fusionroute.generation import MethodContext, build_generator, run_generation
    from fusionroute.provenance import code_version, imported_package_files

    seed_everything(params["seed"])
    records = read_jsonl(inputs["data"])
    if params.get("limit"):
        records = records[: params["limit"]]
    def instruction(record: dict) -> str:
        # "general" is the judge's open-ended prompt set (Figures 3 and 4): records carry the instruction.
        return record["instruction"] if params["benchmark"] == "general" else instruction_for(params["benchmark"], record)

    models = dict(params["models"])
    tokenizer = models.pop("tokenizer")
    instructions = [instruction(r) for r in records]
    if params.get("max_prompt_tokens"):
        instructions = _fit_instructions(tokenizer, params["prompt_template"], instructions,
                                         int(params["max_prompt_tokens"]))
    samples = [{"id": r["id"], "prompt": render_prompt(params["prompt_template"], text)}
               for r, text in zip(records, instructions)]
    ctx = MethodContext(kind=params["kind"], inputs=models, params=params.get("method_params", {}),
                        tokenizer=tokenizer, dtype=params.get("dtype", "float32"),
                        device=params.get("device", "cpu"), prompt_template=params["prompt_template"])
    if params.get("module"):  # a kind the config registers (method_kinds)
        importlib.import_module(params["module"])
    generator = build_generator(ctx)
    settings = {k: params[k] for k in sorted(params)}
    # the package code the generator runs (its modules are imported by now): part of the resume key,
    # and recorded so that tables can mark cells whose code changed since (fusionroute.provenance)
    code = code_version()
    run_generation(generator, samples, outputs["generations"], params["batch_size"], params["max_new_tokens"],
                   settings, desc=f"{params['method']}/{params['benchmark']}",
                   resume_key={**settings, "model_files": model_files(params["models"]), "code": code["code_hash"]})
    write_json(outputs["settings"], {**settings, "code": code_version(sorted(set(code["files"]) | set(imported_package_files())))})


@step
def score(inputs: dict, outputs: dict, params: dict, threads: int) -> None:
    """Score one cell, strictly: a torn, empty or incomplete generations file stops the step
    (fusionroute.eval.scoring.ScoringInputError) instead of being scored as if complete."""
    from fusionroute.eval.scoring import score_files
    from fusionroute.io import read_json

    # The generate step decodes only the first `limit` records when asked (Collab's subset); its
    # settings.json, written next to the generations by the same job, says so. Expect just those.
    settings = Path(inputs.get("settings") or Path(inputs["generations"]).with_name("settings.json"))
    limit = read_json(settings).get("limit") if settings.is_file() else None
    result = score_files(params["benchmark"], Path(inputs["generations"]), Path(inputs["data"]),
                         limit=limit, allow_partial=bool(params.get("allow_partial", False)))
    write_json(outputs["scores"], result)
