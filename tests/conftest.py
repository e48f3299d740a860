"""Shared fixtures: the real portraits and speech in ../shared/data (beside the project root)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("AVATARCAST_TEST_DATA", PROJECT_ROOT.parent / "shared" / "data"))
PORTRAITS = DATA_DIR / "portraits"
SPEECH = DATA_DIR / "speech"

# Tiny torch models are far faster with one thread on a small, busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"test data not found at {DATA_DIR}; set AVATARCAST_TEST_DATA to the shared data folder")
    return DATA_DIR


@pytest.fixture(scope="session")
def portraits(data_dir: Path) -> Path:
    return data_dir / "portraits"


@pytest.fixture(scope="session")
def speech(data_dir: Path) -> Path:
    return data_dir / "speech"


@pytest.fixture(scope="session")
def transcripts(speech: Path) -> dict[str, str]:
    """LJ Speech clip id -> its normalised transcript, from metadata.csv."""
    with open(speech / "ljspeech" / "metadata.csv", newline="", encoding="utf-8") as f:
        return {row[0]: row[2] for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE)}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "ray: starts a local Ray (a few seconds); deselect with -m 'not ray'")
