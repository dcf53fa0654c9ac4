"""A fixture for the tests that train: one intra-op CPU thread while they run.

OpenMP worker threads spin while they wait for each other. When the two cores of a test
machine are shared with other processes, two threads can be many times slower than one:
the learning test took 356 s with two threads and 52 s with one on a busy machine here.
"""

import pytest
import torch


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Run the module's tests with ``torch.set_num_threads(1)``, then restore the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
