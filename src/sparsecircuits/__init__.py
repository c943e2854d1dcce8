"""sparsecircuits: how sparse transformers trade capability for human-readable circuits."""

# First, before anything imports torch: it sets the OpenMP wait policy (see threads.py).
from . import threads  # noqa: F401
from .checkpoint import load, save_checkpoint
from .config import ModelConfig, TrainConfig, resolve
from .errors import UserError
from .model import SparseGPT
from .train import train

__all__ = [
    "ModelConfig",
    "SparseGPT",
    "TrainConfig",
    "UserError",
    "load",
    "resolve",
    "save_checkpoint",
    "train",
]
__version__ = "0.1.0"
