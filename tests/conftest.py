"""Fixtures shared by every test folder (plain helpers are in helpers.py)."""

from __future__ import annotations

import pytest
from helpers import ARCHITECTURES


@pytest.fixture(params=sorted(ARCHITECTURES))
def architecture(request) -> str:
    """Each architecture of helpers.ARCHITECTURES in turn."""
    return request.param
