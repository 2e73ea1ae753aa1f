"""Run the workflow step named like the rule (registered in fusionroute.steps), logging to the rule's log.

On one machine the job goes to a warm step server that has torch and transformers imported
already (fusionroute/warm.py); under SLURM, or with FUSIONROUTE_WARM=0, it runs in this process."""
import sys

from fusionroute import warm


def _plain(value):
    # Snakemake's Namedlist/Params objects -> plain lists/dicts for the library code.
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)
params = {k: _plain(v) for k, v in smk.params.items()}
# Settings computed by functions (Snakemake would read braces in plain strings as wildcards).
for merged in ("common", "cell"):
    params.update(params.pop(merged, {}))
job = {
    "step": params.pop("step", smk.rule),
    "inputs": {k: _plain(v) for k, v in smk.input.items()},
    "outputs": {k: _plain(v) for k, v in smk.output.items()},
    "params": params,
    "threads": smk.threads,
    "gpu": int(smk.resources.get("gpu", 0) or 0),
    "log": smk.log[0],
}
status = warm.submit(job) if warm.enabled() else warm.run_job(job)
if status != 0:
    sys.exit(f"step {job['step']} failed (exit status {status}); see {job['log']}")
