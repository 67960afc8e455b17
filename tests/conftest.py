"""Test-wide settings: no user cache is seen, and no test reaches another machine."""

import ipaddress
import os
import socket
import tempfile

import torch

os.environ.setdefault("MVFORMER_NO_PROGRESS", "1")  # progress bars would drown the test log
# Feature caches found in the default place are used automatically: tests must never see the user's.
os.environ["MVFORMER_CACHE_DIR"] = tempfile.mkdtemp(prefix="mvformer-test-cache-")
# The Hugging Face Hub: offline, with an empty cache of the suite's own that tests fill in the Hub's layout. Set
# before huggingface_hub is imported, which reads these variables once.
HUGGING_FACE_HOME = tempfile.mkdtemp(prefix="mvformer-test-hf-")
os.environ.update(HF_HOME=HUGGING_FACE_HOME, HF_HUB_CACHE=os.path.join(HUGGING_FACE_HOME, "hub"),
                  HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
# The models under test are tiny: one thread is as fast, and it cannot stall (OpenMP busy-waiting)
# when another process shares the two cores.
torch.set_num_threads(1)


class NetworkAccessError(RuntimeError):
    """A test tried to reach another machine. Not an OSError, so that no retry or offline fallback swallows it."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine: DDP's gloo and the report's chromedriver use it."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def refuse_remote(connect):
    """`socket.connect` or `connect_ex`, refusing any internet address that is not loopback."""
    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(str(address[0])):
            raise NetworkAccessError(f"a test tried to connect to {address[0]} port {address[1]}: tests must not use "
                                     f"the network")
        return connect(self, address)
    return guarded


socket.socket.connect = refuse_remote(socket.socket.connect)
socket.socket.connect_ex = refuse_remote(socket.socket.connect_ex)
