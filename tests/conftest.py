"""Fixtures shared by every test folder."""

import pytest
import torch


@pytest.fixture()
def one_thread():
    """One intra-op thread: on 2 shared cores a second OpenMP thread that gets descheduled stalls every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
