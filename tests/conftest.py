"""Test-wide settings."""

import os
import tempfile

import torch

os.environ.setdefault("MVFORMER_NO_PROGRESS", "1")  # progress bars would drown the test log
# Feature caches found in the default place are used automatically: tests must never see the user's.
os.environ["MVFORMER_CACHE_DIR"] = tempfile.mkdtemp(prefix="mvformer-test-cache-")
# The models under test are tiny: one thread is as fast, and it cannot stall (OpenMP busy-waiting)
# when another process shares the two cores.
torch.set_num_threads(1)
