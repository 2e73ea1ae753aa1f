"""Helpers shared by several step modules (fusionroute/steps/<area>.py): seeding and the
fingerprints of a step's input files. Step code only; the library never imports this module."""
from __future__ import annotations

import random
from typing import Any


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_files(models: dict[str, Any]) -> dict[str, Any]:
    """Fingerprints of the files behind every path (a model folder, a data file; a hub id: the id itself)."""
    from fusionroute.trainers import model_fingerprint

    return {key: [model_fingerprint(v) for v in value] if isinstance(value, list) else model_fingerprint(value)
            for key, value in sorted(models.items())}
