"""Test-wide settings."""

import os

import torch

os.environ.setdefault("MVFORMER_NO_PROGRESS", "1")  # progress bars would drown the test log
# The models under test are tiny: one thread is as fast, and it cannot stall (OpenMP busy-waiting)
# when another process shares the two cores.
torch.set_num_threads(1)
