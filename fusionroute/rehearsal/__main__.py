"""CLI: python -m fusionroute.rehearsal --out DIR [--seed 0] [--workers 2]"""
from __future__ import annotations

import argparse
import json
import time

from fusionroute.rehearsal.build import MANIFEST, RehearsalSettings, build_rehearsal_hub, is_complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusionroute.rehearsal",
        description="Write the rehearsal world's local, hub-shaped model and dataset folders.")
    parser.add_argument("--out", required=True, help="folder to write (hub ids become owner/name sub-folders)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=RehearsalSettings.workers,
                        help="processes for the model parts (1 = serial; the output is the same)")
    args = parser.parse_args(argv)
    settings = RehearsalSettings(workers=args.workers)
    already = is_complete(args.out, args.seed, settings)
    started = time.perf_counter()
    out = build_rehearsal_hub(args.out, args.seed, settings)
    if already:
        print(f"[rehearsal] {out} is already complete (seed {args.seed})")
    else:
        print(f"[rehearsal] wrote {out} in {time.perf_counter() - started:.1f} s")
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    keys = ("llama3", "gemma2", "reward_models", "datasets", "seconds")
    print(json.dumps({k: manifest[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
