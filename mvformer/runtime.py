"""The process's device and random state: which device to run on, one seed for everything, save and restore."""

import random

import numpy as np
import torch

from mvformer.errors import MVFormerError


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else the CPU; "cuda" without a CUDA device is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MVFormerError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_states() -> dict:
    """Every global random state this process uses (Python, NumPy, torch CPU and CUDA), checkpoint-safe types."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_states(states: dict) -> None:
    """Undo `random_states`: put every generator back where it was."""
    random.setstate(states["python"])
    numpy_state = dict(states["numpy"])
    numpy_state["state"] = dict(numpy_state["state"], key=numpy_state["state"]["key"].numpy().astype(np.uint32))
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
