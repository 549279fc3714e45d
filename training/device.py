"""Which torch device to run on: one rule for training, evaluation and the families.

Its own module so that evaluation (below the model-family table) and the training loop
(above it) share it without importing each other.
"""

from __future__ import annotations

import os

import torch


def select_device(name: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU. Under torchrun, CUDA means this process's
    ``LOCAL_RANK`` GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available; use 'auto'")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)
