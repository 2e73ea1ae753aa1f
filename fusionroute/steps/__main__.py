"""`python -m fusionroute.steps run-step <job.json>`: run one workflow step from a job file; what
`accelerate launch` starts in every process of a multi-GPU training step (fusionroute.scaling)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fusionroute.steps import run_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a workflow step from a job file (used by accelerate launch).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run-step")
    run.add_argument("job", help="JSON {name, inputs, outputs, params, threads}")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    run_step(job["name"], job["inputs"], job["outputs"], job["params"], job.get("threads", 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
