"""Fixtures shared by every test folder (plain helpers are in helpers.py)."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import ARCHITECTURES

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One of several xdist workers sharing the machine's cores: one thread each for the in-process tests, instead
    # of every worker starting a thread per core.
    torch.set_num_threads(1)


@pytest.fixture(params=sorted(ARCHITECTURES))
def architecture(request) -> str:
    """Each architecture of helpers.ARCHITECTURES in turn."""
    return request.param
