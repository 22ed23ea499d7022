"""
Training randomness that survives a resume. detectron2's RPN / RoI box sampling draws from torch's
global generator, and a loader's iterator draws its base seed from it when it starts: a run resumed
from a checkpoint then samples other boxes than the uninterrupted run did after that iteration.
``TrainingRNG`` puts the generators in the checkpoint; ``training_rngs_untouched`` keeps work that
is not training (evaluations, a loader starting) from moving them.
"""
import contextlib
import random

import numpy as np
import torch
from detectron2.utils import comm

__all__ = ["TrainingRNG", "training_rngs_untouched"]


class TrainingRNG:
    """torch's default generators (CPU, and the current CUDA device's) as a checkpointable; restored
    on the main process only (each process of a distributed run has its own seed)."""

    def state_dict(self):
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state):
        if not comm.is_main_process():
            return
        torch.set_rng_state(state["cpu"].cpu())
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"].cpu())


@contextlib.contextmanager
def training_rngs_untouched():
    """The code inside leaves torch's (CPU and CUDA), numpy's and Python's global generators as it
    found them."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
