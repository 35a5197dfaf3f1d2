"""Training state for ``--resume``: RNG states and the path logic, all ``weights_only``-loadable."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError


def get_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as tensors / plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume(path: str | Path) -> Path:
    """A run folder (-> ``weights/last.pt``) or a ``last.pt`` file; one-line error when neither exists."""
    p = Path(path)
    if p.is_dir():
        p = p / "weights" / "last.pt"
    if not p.is_file():
        raise ConfigError(f"--resume {path}: no such checkpoint (give a run folder or its weights/last.pt)")
    return p


def run_dir_of(last: Path) -> Path:
    """The run folder of ``RUN/weights/last.pt``."""
    return last.parent.parent if last.parent.name == "weights" else last.parent
