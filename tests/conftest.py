"""Shared pytest fixtures: the upstream reference tensors beside the project root."""

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
UPSTREAM = SHARED / "upstream"


@pytest.fixture(scope="session")
def upstream_dir() -> pathlib.Path:
  """`../shared/upstream`: reference tensors produced by upstream's PyTorch code."""
  if not UPSTREAM.is_dir():
    pytest.fail(f"reference data missing: {UPSTREAM} (the shared/ folder beside the repo)")
  return UPSTREAM
