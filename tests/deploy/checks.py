"""What tests/deploy checks manifests with: real `pushgw` subcommands and real `PUSHGW_` settings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from pushgw.cli import main as pushgw_main
from pushgw.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "config" / "pushgw.toml"
DRAIN_S = 30  # uvicorn's timeout_graceful_shutdown and worker.shutdown_timeout_s


def is_subcommand(name: str) -> bool:
    """`pushgw NAME --help` exits 0 for a real subcommand and 2 (usage error) for anything else."""
    with pytest.raises(SystemExit) as exit_info:
        pushgw_main([name, "--help"])
    return exit_info.value.code == 0


def pushgw_subcommand(argv: list[str]) -> str:
    """The subcommand of a `pushgw …` (or `…/bin/pushgw …`) command line."""
    words = [word for word in argv if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word) and word != "exec"]
    assert Path(words[0]).name == "pushgw", f"not a pushgw command: {argv}"
    return words[1]


def setting_path(name: str) -> tuple[str, ...]:
    """PUSHGW_HTTP__PORT → ("http", "port"), checked against the Settings tree."""
    assert name.startswith("PUSHGW_"), name
    parts = tuple(part.lower() for part in name.removeprefix("PUSHGW_").split("__"))
    model: Any = Settings
    for part in parts:
        fields = model.model_fields
        assert part in fields, f"{name}: no setting {'.'.join(parts)}"
        annotation = fields[part].annotation
        model = next(
            (arg for arg in getattr(annotation, "__args__", ()) if hasattr(arg, "model_fields")), annotation
        )
    return parts


def load_with_environment(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, config: Path | None = None
) -> Settings:
    """Load settings exactly as the process would: the TOML file plus these PUSHGW_ variables."""
    for name in list(os.environ):
        if name.startswith("PUSHGW_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith("PUSHGW_") and name != "PUSHGW_CONFIG":
            setting_path(name)
            monkeypatch.setenv(name, value)
    settings = load_settings(config)
    for name, value in environment.items():
        if name.startswith("PUSHGW_") and name not in ("PUSHGW_CONFIG", "PUSHGW_APPS"):
            loaded: Any = settings
            for part in setting_path(name):
                loaded = getattr(loaded, part)
            assert str(loaded).lower() == value.lower() or json.loads(value) == json.loads(
                json.dumps(loaded, default=str)
            ), f"{name}={value!r} loaded as {loaded!r}"
    return settings
