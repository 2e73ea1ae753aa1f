"""Build results/theory/ with fusionroute.theory.report, logging to the rule's log."""
import contextlib
import os

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)
os.environ.setdefault("FUSIONROUTE_NO_PROGRESS", "1")
with open(smk.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    try:
        import torch

        torch.set_num_threads(max(1, smk.threads))
        from fusionroute.theory.report import ReportConfig, build

        build(ReportConfig.from_dict(dict(smk.params["settings"])), dict(smk.output.items()))
    except BaseException:
        import traceback

        traceback.print_exc()
        raise
