"""Shared fixtures."""

import pytest

from tests.helpers import make_splits


@pytest.fixture
def tiny_splits():
    return make_splits()
