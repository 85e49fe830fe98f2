"""The configuration tree: one TOML file plus `PUSHGW_…` environment overrides, validated once at startup."""

from __future__ import annotations

import os
import tomllib
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pushgw.errors import PushgwError

IpNetwork = IPv4Network | IPv6Network
ANY_ADDRESS: list[IpNetwork] = [ip_network("0.0.0.0/0"), ip_network("::/0")]


class ConfigError(PushgwError):
    """The configuration cannot be used; the message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MongoSettings(Section):
    """`uri` unset means the embedded SecantusDB server, data kept under `embedded_path`."""

    uri: str | None = None
    embedded_path: Path = Path(".pushgw/mongo")
    embedded_port: int = Field(default=27117, ge=1, le=65535)
    timeout_ms: int = Field(default=5000, ge=100)


class QueueSettings(Section):
    """`url` is `amqp://…` (RabbitMQ) or `memory://` (in-process, `pushgw dev` only)."""

    url: str = "memory://"
    prefix: str = Field(default="pushgw", pattern=r"^[A-Za-z0-9_.-]+$")
    publish_timeout_s: float = Field(default=5.0, gt=0)
    delivery_limit: int = Field(default=5, ge=1)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("amqp://", "amqps://", "memory://")):
            raise ValueError("must start with amqp://, amqps:// or memory://")
        return url

    @property
    def is_memory(self) -> bool:
        return self.url.startswith("memory://")


class HttpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1337, ge=0, le=65535)
    mounts: list[str] = Field(default_factory=lambda: ["/parse", "/1"], min_length=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    cors_allow_origin: str = "*"
    trusted_proxies: list[IpNetwork] = Field(default_factory=list)
    request_id_ttl_s: int = Field(default=86_400, ge=60)
    processes: int = Field(default=1, ge=1, le=64)

    @field_validator("mounts")
    @classmethod
    def _mounts_are_paths(cls, mounts: list[str]) -> list[str]:
        for mount in mounts:
            if not mount.startswith("/") or mount.endswith("/") or " " in mount:
                raise ValueError(f"{mount!r} must look like /parse (leading slash, no trailing slash)")
        return mounts


class WorkerSettings(Section):
    """The fleet: batch sizes, concurrency, retries, drain and the background loops' timing."""

    batch_size: int = Field(default=500, ge=1, le=5000)
    prefetch: int = Field(default=16, ge=1)  # plan units; a one-batch push is also sent in its plan slot
    send_prefetch: int = Field(default=32, ge=1)
    send_small_pushes_inline: bool = True  # an audience of one batch is sent by its planner, not queued
    unit_rows: bool = True  # fan-out units carry raw rows; false: devices, for workers of older builds
    progress_chunk: int = Field(default=100, ge=1)
    progress_interval_s: float = Field(default=1.0, ge=0)
    max_attempts: int = Field(default=5, ge=1)
    delay_tiers_s: list[int] = Field(default_factory=lambda: [5, 30, 120, 600, 1800], min_length=1)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    requeue_delay_s: float = Field(default=1.0, ge=0)
    badge_device_types: list[str] | None = None
    scheduler_interval_s: float = Field(default=5.0, gt=0)
    watchdog_interval_s: float = Field(default=30.0, gt=0)
    planner_lease_s: float = Field(default=300.0, gt=0)
    planning_timeout_s: float = Field(default=3600.0, gt=0)
    stale_pending_s: float = Field(default=3600.0, gt=0)
    stalled_running_s: float = Field(default=7200.0, gt=0)
    dead_letter_grace_s: float = Field(default=600.0, ge=0)
    plan_publish_window: int = Field(default=8, ge=1)
    plan_checkpoint_s: float = Field(default=1.0, ge=0)
    schema_cache_s: float = Field(default=5.0, ge=0)
    installation_indexes: list[str] = Field(default_factory=lambda: ["_p_user", "installationId"])
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("delay_tiers_s")
    @classmethod
    def _tiers_ascending(cls, tiers: list[int]) -> list[int]:
        if sorted(set(tiers)) != tiers or tiers[0] <= 0:
            raise ValueError("must be positive, ascending and without repeats")
        return tiers


class RecordingSettings(Section):
    """The recording provider: accepts deliveries for the listed transports and stores what it got.

    For tests, benchmarks and `pushgw dev` without real credentials; never for production.
    """

    transports: list[Literal["apns", "fcm", "ppns"]] = Field(default_factory=list)
    # memory: in the process; mongo: a `pushgw_recorded` row each; file: a JSON line each, appended to
    # `file` (what benchmarks use, so recording does not load the database being measured); none: accept
    # and keep nothing (fan-out benchmarks: no process of the fleet keeps every delivery in memory)
    store: Literal["memory", "mongo", "file", "none"] = "memory"
    file: Path | None = None
    fail_tokens: dict[str, str] = Field(default_factory=dict)
    latency_ms: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _file_for_file_store(self) -> RecordingSettings:
        if self.store == "file" and self.file is None:
            raise ValueError('store = "file" needs `file`, the path deliveries are appended to')
        return self


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class TracingSettings(Section):
    """OpenTelemetry traces of each push (intake → plan → units), sent as OTLP over HTTP. Off by default."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"  # an OpenTelemetry Collector, Jaeger, Tempo …
    service_name: str = "pushgw"
    sample_ratio: float = Field(default=1.0, ge=0, le=1)  # share of pushes traced


class ApnsSettings(Section):
    """One APNs credential: token auth (`.p8` + key id + team id) or a certificate (`.pem`/`.p12`),
    for the bundle ids (installation `appIdentifier`s) it serves, in one environment."""

    bundle_ids: list[str] = Field(min_length=1)
    default: bool = False  # serves installations without an `appIdentifier` (topic: the first bundle id)
    environment: Literal["production", "sandbox"] = "production"
    key_file: Path | None = None
    key_id: str | None = None
    team_id: str | None = None
    certificate_file: Path | None = None
    certificate_key_file: Path | None = None  # when the `.pem` holds only the certificate
    certificate_password: SecretStr | None = None
    url: str | None = None  # another endpoint (an emulator); default: Apple's host for `environment`
    ca_file: Path | None = None  # trust for `url`
    connections: int = Field(default=4, ge=1, le=64)
    quarantine_connections: int = Field(default=1, ge=1, le=16)
    request_timeout_s: float = Field(default=10.0, gt=0)
    pause_s: float = Field(default=60.0, gt=0)  # a broken credential rests this long between attempts

    @model_validator(mode="after")
    def _one_auth(self) -> ApnsSettings:
        token = self.key_file is not None
        if token == (self.certificate_file is not None):
            raise ValueError("set either key_file (+ key_id, team_id) or certificate_file")
        if token and not (self.key_id and self.team_id):
            raise ValueError("key_file needs key_id and team_id")
        return self

    @property
    def endpoint(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host = "api.push.apple.com" if self.environment == "production" else "api.sandbox.push.apple.com"
        return f"https://{host}"


class FcmSettings(Section):
    """FCM HTTP v1 for one app: the Firebase service account that may send for the project."""

    service_account_file: Path
    project_id: str | None = None  # default: the service account's project_id
    url: str | None = None  # another endpoint (an emulator); default https://fcm.googleapis.com
    ca_file: Path | None = None
    connections: int = Field(default=2, ge=1, le=32)
    request_timeout_s: float = Field(default=10.0, gt=0)
    notification: dict[str, str] | None = None  # optional `android.notification` for every push
    pause_s: float = Field(default=60.0, gt=0)

    @property
    def endpoint(self) -> str:
        return (self.url or "https://fcm.googleapis.com").rstrip("/")


class PpnsSettings(Section):
    """The PPNS device socket server (`pushgw ppns`) and the backlog the fleet's PPNS provider writes.

    TLS unless `plain_tcp` (behind a terminator that must not offer h2, see docs/ppns.md).
    """

    host: str = "0.0.0.0"
    port: int = Field(default=443, ge=0, le=65535)
    cert_file: Path | None = None
    key_file: Path | None = None
    plain_tcp: bool = False
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    reject_delay_s: float = Field(default=1.0, ge=0)  # before resetting a bad handshake
    max_input_line_bytes: int = Field(default=4096, ge=256)
    push_line_bytes: int = Field(default=2047, ge=64)  # the Linux client's 2048-byte buffer, LF included
    app_push_line_bytes: dict[str, int] = Field(default_factory=dict)  # app id → limit (1023 CC3200, 127)
    installation_push_line_bytes: dict[str, int] = Field(default_factory=dict)  # installation id → limit
    keepalive_interval_s: float = Field(default=300.0, gt=0)  # our own `{}` to every device
    tcp_keepalive_idle_s: int = Field(default=60, ge=1)
    tcp_keepalive_interval_s: int = Field(default=20, ge=1)
    tcp_keepalive_count: int = Field(default=5, ge=1)
    write_timeout_s: int = Field(default=120, ge=1)  # TCP_USER_TIMEOUT: unacknowledged data → dead peer
    max_write_buffer_bytes: int = Field(default=65_536, ge=4096)  # a reader this far behind is reset
    retention_s: float = Field(default=7 * 86_400.0, gt=0)
    backlog_cap: int = Field(default=100, ge=1)
    replay_without_last: Literal["retained", "unwritten", "none"] = "unwritten"
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")  # default: host-pid-random
    poll_interval_s: float = Field(default=30.0, gt=0)  # safety-net sweep of the backlog (live: node queue)
    poll_interval_without_broker_s: float = Field(default=0.25, gt=0)  # `queue.url = memory://`: no live path
    written_interval_s: float = Field(default=0.5, gt=0)  # `written_time` bulk updates
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # processes > 1: port + k for process k
    processes: int = Field(default=1, ge=1, le=64)  # > 1: node processes on one port (SO_REUSEPORT)

    @model_validator(mode="after")
    def _room_for_processes(self) -> PpnsSettings:
        if self.processes == 1:
            return self
        last = self.processes - 1
        if self.node_id is not None and len(f"{self.node_id}-{last}") > 100:
            raise ValueError(
                f"node_id: at most {99 - len(str(last))} characters with processes = {self.processes}"
            )
        if self.metrics_port and self.metrics_port + last > 65535:
            raise ValueError(f"metrics_port: port + {last} (the last process's) exceeds 65535")
        return self

    def push_line_limit(self, app_id: str, installation_id: str) -> int:
        """The longest push line (JSON + LF) this installation's client can take."""
        if installation_id in self.installation_push_line_bytes:
            return self.installation_push_line_bytes[installation_id]
        return self.app_push_line_bytes.get(app_id, self.push_line_bytes)


class ConsoleSettings(Section):
    """The operator console `pushgw serve` serves at `path`, behind an app's master key."""

    enabled: bool = True
    path: str = Field(default="/console", pattern=r"^/[A-Za-z0-9_.~/-]*[A-Za-z0-9_.~-]$")
    session_ttl_s: int = Field(default=8 * 3600, ge=60)
    recent_pushes: int = Field(default=25, ge=1, le=500)
    poll_interval_ms: int = Field(default=1000, ge=200)
    cookie_secure: bool | None = None  # None: Secure when the request came over https


class AppSettings(Section):
    """One Parse app: its keys, who may use the master key, and the database its Parse Server uses."""

    app_id: str = Field(min_length=1)
    master_key: SecretStr
    read_only_master_key: SecretStr | None = None
    rest_api_key: SecretStr | None = None
    javascript_key: SecretStr | None = None
    client_key: SecretStr | None = None
    dotnet_key: SecretStr | None = None
    master_key_ips: list[IpNetwork] = Field(default_factory=lambda: list(ANY_ADDRESS))
    mongo_database: str = Field(default="parse", pattern=r"^[^/\\. \"$]+$")
    collection_prefix: str = ""
    allow_rest_key_push: bool = False
    scheduled_push: bool = False
    apns: list[ApnsSettings] = Field(default_factory=list)
    fcm: FcmSettings | None = None
    cleanup_invalid_tokens: bool = False  # a real boolean: "0" and "false" mean off (unlike Parse, #6931)
    cleanup_breaker_ratio: float = Field(default=0.5, gt=0, le=1)
    cleanup_breaker_min_devices: int = Field(default=20, ge=1)
    cleanup_pause_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _one_default_apns(self) -> AppSettings:
        if sum(credential.default for credential in self.apns) > 1:
            raise ValueError("at most one apns credential may be the default")
        return self

    @field_validator("master_key")
    @classmethod
    def _master_key_not_empty(cls, key: SecretStr) -> SecretStr:
        if not key.get_secret_value():
            raise ValueError("must not be empty")
        return key

    @property
    def allows_any_address(self) -> bool:
        return any(network.prefixlen == 0 for network in self.master_key_ips if network.version == 4) and any(
            network.prefixlen == 0 for network in self.master_key_ips if network.version == 6
        )

    @property
    def client_keys(self) -> dict[str, SecretStr]:
        """The configured non-master keys by name (Parse: clientKey, javascriptKey, dotNetKey, restAPIKey)."""
        keys = {
            "client_key": self.client_key,
            "javascript_key": self.javascript_key,
            "dotnet_key": self.dotnet_key,
            "rest_api_key": self.rest_api_key,
        }
        return {name: key for name, key in keys.items() if key is not None and key.get_secret_value()}


class Settings(BaseSettings):
    """Everything pushgw reads at startup. Env: `PUSHGW_HTTP__PORT=8080`, `PUSHGW_APPS='[{…}]'`."""

    model_config = SettingsConfigDict(
        env_prefix="PUSHGW_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        nested_model_default_partial_update=True,
    )

    mongo: MongoSettings = MongoSettings()
    queue: QueueSettings = QueueSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    worker: WorkerSettings = WorkerSettings()
    recording: RecordingSettings = RecordingSettings()
    ppns: PpnsSettings | None = None
    console: ConsoleSettings = ConsoleSettings()
    apps: list[AppSettings] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values; the environment must override it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _apps_are_distinct(self) -> Settings:
        seen_ids: set[str] = set()
        seen_stores: set[tuple[str, str]] = set()
        for index, app in enumerate(self.apps):
            if app.app_id in seen_ids:
                raise ValueError(f"apps[{index}].app_id {app.app_id!r} is configured twice")
            store = (app.mongo_database, app.collection_prefix)
            if store in seen_stores:
                raise ValueError(f"apps[{index}].mongo_database {app.mongo_database!r} is used by two apps")
            seen_ids.add(app.app_id)
            seen_stores.add(store)
        return self

    def app(self, app_id: str) -> AppSettings | None:
        return next((app for app in self.apps if app.app_id == app_id), None)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with every secret shown as `**********` (for logs and `pushgw doctor`)."""
        return self.model_dump(mode="json")


def load_settings(config_path: str | Path | None = None) -> Settings:
    """Read the TOML file (`--config`, else `$PUSHGW_CONFIG`) and the environment, or raise ConfigError."""
    path = config_path or os.environ.get("PUSHGW_CONFIG")
    values: dict[str, Any] = {}
    if path:
        values = _read_toml(Path(path))
    try:
        return Settings(**values)
    except ValidationError as error:
        raise ConfigError(_describe(error, path)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _describe(error: ValidationError, path: str | Path | None) -> str:
    source = f" in {path}" if path else ""
    lines = [f"invalid configuration{source} (or PUSHGW_ environment):"]
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
