"""Run the workflow step named like the rule (fusionroute.pipeline), logging to the rule's log."""
import contextlib
import sys

from fusionroute.devices import claim_gpus
from fusionroute.pipeline import run_step


def _plain(value):
    # Snakemake's Namedlist/Params objects -> plain lists/dicts for the library code.
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)
inputs = {k: _plain(v) for k, v in smk.input.items()}
outputs = {k: _plain(v) for k, v in smk.output.items()}
params = {k: _plain(v) for k, v in smk.params.items()}
# Settings computed by functions (Snakemake would read braces in plain strings as wildcards).
for merged in ("common", "cell"):
    params.update(params.pop(merged, {}))
name = params.pop("step", smk.rule)
with open(smk.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    try:
        # a local GPU job claims its own device(s) before anything initialises CUDA
        gpus = claim_gpus(int(smk.resources.get("gpu", 0) or 0))
        if gpus:
            print(f"[step] running on GPU(s) {','.join(gpus)}", flush=True)
        run_step(name, inputs, outputs, params, smk.threads)
    except BaseException:
        import traceback

        traceback.print_exc()
        raise
