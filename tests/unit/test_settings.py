"""Configuration: TOML + PUSHGW_ environment; a bad or unknown key stops startup naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushgw.settings import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pushgw.toml"
    path.write_text(text)
    return path


APP = '[[apps]]\napp_id = "a"\nmaster_key = "m"\n'


def test_defaults_are_the_embedded_setup(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, APP))
    assert settings.mongo.uri is None
    assert settings.queue.url == "memory://"
    assert (settings.http.host, settings.http.port, settings.http.mounts) == (
        "127.0.0.1",
        1337,
        ["/parse", "/1"],
    )
    assert settings.apps[0].mongo_database == "parse"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHGW_HTTP__PORT", "8080")
    monkeypatch.setenv("PUSHGW_QUEUE__URL", "amqp://guest:guest@mq:5672/")
    settings = load_settings(write(tmp_path, APP + '[http]\nport = 9000\nhost = "0.0.0.0"\n'))
    assert (settings.http.port, settings.http.host, settings.queue.url) == (
        8080,
        "0.0.0.0",
        "amqp://guest:guest@mq:5672/",
    )


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHGW_CONFIG", str(write(tmp_path, APP)))
    assert load_settings().apps[0].app_id == "a"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (APP + '[http]\nport = "abc"\n', "http.port"),
        (APP + "[http]\nprot = 1\n", "http.prot: unknown key"),
        ('[[apps]]\napp_id = "a"\n', "apps.0.master_key"),
        (APP + '[queue]\nurl = "redis://x"\n', "queue.url"),
        (APP + APP, "configured twice"),
        (APP + '[http]\nmounts = ["parse/"]\n', "http.mounts"),
        (APP + '[recording]\nstore = "file"\n', 'store = "file" needs `file`'),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text))
    assert named in str(raised.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_are_redacted() -> None:
    from pushgw.settings import Settings

    settings = Settings(apps=[{"app_id": "a", "master_key": "super-secret"}])
    assert "super-secret" not in str(settings.redacted())
    assert "super-secret" not in repr(settings)
