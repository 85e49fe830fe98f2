"""The Parse Server e2e host (tests/e2e/parse_host): installed once per run, pinned by its lockfile."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def parse_host_modules() -> Path:
    """`npm ci` of parse_host and deploy/parse-server (skipped by scripts/ensure-parse-server.sh when the
    installed tree matches the lockfile hash); fails, naming what is missing, without node or npm."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "ensure-parse-server.sh")], check=False, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"cannot install the Parse Server e2e host:\n{result.stderr}", pytrace=False)
    return ROOT / "tests" / "e2e" / "parse_host" / "node_modules"
