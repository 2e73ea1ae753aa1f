# The planner (fusionroute/plan.py): estimated peak GPU memory, host memory, hours and GPU-hours of
# every rule and family of this world, checked against the SLURM profile's resources.
#   snakemake results/paper/plan.md --configfile config/paper.yaml --cores 1
# It reads the config this workflow runs with (--configfile and --config included) and the
# profile named by $FUSIONROUTE_PLAN_PROFILE (default profiles/slurm). Nothing is loaded or
# downloaded: model shapes come from local config.json files, the HF cache or the planner's table
# of the paper's checkpoints. The job FAILS when a rule does not fit (its log,
# logs/<world>/plan.log, holds the table and, per rule, the setting to change); set
# FUSIONROUTE_PLAN_NO_FAIL=1 to write the report anyway.
import os as _plan_os

localrules: plan


rule plan:
    output:
        md=f"{RESULTS}/plan.md",
        json=f"{RESULTS}/plan.json",
    params:
        profile=_plan_os.environ.get("FUSIONROUTE_PLAN_PROFILE", "profiles/slurm"),
        no_fail=_plan_os.environ.get("FUSIONROUTE_PLAN_NO_FAIL", "") not in ("", "0"),
    log:
        f"logs/{WORLD}/plan.log",
    run:
        import json
        import subprocess
        import sys
        import tempfile

        # the workflow's own config (after --configfile/--config), as the planner's config file
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            json.dump(config, handle)  # JSON is YAML
        cmd = [sys.executable, "-m", "fusionroute.plan", "--configfile", handle.name, "--profile", params.profile,
               "--markdown", output.md, "--json", output.json] + (["--no-fail"] if params.no_fail else [])
        try:
            with open(log[0], "w") as out:
                code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        finally:
            _plan_os.unlink(handle.name)
        if code != 0:
            raise RuntimeError(f"the plan does not fit the profile's resources; see {log[0]} (the table and, "
                               "per rule, the setting to change)")
