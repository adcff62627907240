"""The glibc allocator settings that keep freed tensor memory in the process."""

from __future__ import annotations

import platform
import sys

import pytest

from ifval import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def untuned(monkeypatch):
    monkeypatch.setattr(allocator, "_tuned", False)


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds exist only in glibc")
def test_glibc_accepts_thresholds(untuned, monkeypatch):
    monkeypatch.delenv(allocator.DISABLE_VARIABLE, raising=False)
    assert allocator.tune_allocator() is True
    assert allocator._tuned is True


def test_environment_variable_disables_tuning(untuned, monkeypatch):
    monkeypatch.setenv(allocator.DISABLE_VARIABLE, "1")
    assert allocator.tune_allocator() is False
    assert allocator._tuned is False
