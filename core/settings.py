"""Settings for every ecpds process: ECPDS_* environment variables, then an optional TOML file."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ecpds.core.roles import Role

CONFIG_ENV = "ECPDS_CONFIG"
# The metrics ports of a worker run by `ecpds worker` (and `ecpds up`) unless set; a
# worker started in code (tests, embedding) serves no metrics unless asked.
WORKER_METRICS_PORT = 9464
WORKER_SDK_METRICS_PORT = 9465


def passive_range(text: str) -> range:
    """The ports of "FIRST-LAST" (both included, 1024 to 65535)."""
    first, dash, last = text.strip().partition("-")
    if not (dash and first.isdecimal() and last.isdecimal()):
        raise ValueError(f"{text!r} is not a port range FIRST-LAST, such as 4100-4119")
    low, high = int(first), int(last)
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"{text!r}: the ports must go up, within 1024 to 65535")
    return range(low, high + 1)


class Settings(BaseSettings):
    """Everything a process needs to find its peers; defaults keep all state in ./var."""

    model_config = SettingsConfigDict(env_prefix="ECPDS_", extra="forbid")

    home: Path = Field(
        default=Path("var"),
        description="the state folder itself (catalog, store, keys, log/, run/), not its parent",
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; SQLite under home if empty")
    store_locations: list[str] = Field(
        default_factory=list, description="fsspec URLs of store locations; home/store if empty"
    )
    store_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="non-secret fsspec options of store locations, keyed by location URL"
        " (e.g. endpoint_url, client_kwargs); their keys go in store_credentials_file",
    )
    secret_key_file: Path | None = Field(default=None, description="Fernet key for credentials")
    admin_password_file: Path | None = Field(
        default=None,
        description="the password of user admin, from a file (a mounted Secret): given to"
        " admin on first start instead of a random one written to admin.toml, and used by"
        " the CLI",
    )
    store_credentials_file: Path | None = Field(
        default=None,
        description="store locations' keys, sealed with the secret key (`ecpds store"
        " credentials`); home/store-credentials.json if empty",
    )

    temporal_address: str = Field(default="", description="host:port of a running Temporal")
    temporal_namespace: str = "default"
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    task_queue: str = Field(
        default="ecpds",
        description="names the roles' task queues: dissemination on it, the others on"
        " NAME-acquisition and NAME-auxiliary",
    )
    worker_roles: list[Role] = Field(
        default_factory=lambda: list(Role), description="what `ecpds worker` runs (default all)"
    )
    worker_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="after SIGTERM, how long a worker lets running activities finish before"
        " it hands the rest back to Temporal for another worker",
    )
    worker_tuner: Literal["fixed", "resource"] = Field(
        default="fixed",
        description="fixed: worker_slots activities, local activities and workflow tasks at"
        " once; resource: as many as keep the host under 80% memory and 90% CPU",
    )
    worker_slots: int = Field(
        default=64, gt=0, description="each kind of task a worker runs at once (fixed tuner)"
    )
    workers: str = Field(
        default="1",
        coerce_numbers_to_str=True,  # `workers = 2` in the settings file
        description="`ecpds up`'s workers unless --workers is given: a count or MIN..MAX of"
        " workers running every role, or ROLE=RANGE,... (dissemination=1..4,acquisition=1..2)"
        " for a pool of each role",
    )
    worker_scale_backlog: int = Field(
        default=100,
        gt=0,
        description="`ecpds up --workers MIN..MAX`: one worker more for each this many tasks"
        " waiting on the task queues (of its role, with ranges by role)",
    )
    worker_scale_in_after: float = Field(
        default=30.0,
        ge=0,
        description="`ecpds up --workers MIN..MAX`: seconds the backlog stays small before"
        " the workers it no longer needs are stopped",
    )
    sweep_every: int = Field(
        default=300,
        gt=0,
        description="seconds between sweeps that wake destinations a lost signal left waiting",
    )

    bind: str = "127.0.0.1"
    public_host: str = "127.0.0.1"
    https_port: int = 4443
    ftp_port: int = 4021
    ftp_passive_ports: str = Field(
        default="",
        description="FIRST-LAST: the ports passive FTP offers for data channels, to publish"
        " beside ftp_port from a container or behind a firewall; empty: any free port",
    )
    sftp_port: int = 4022
    s3_port: int = 4080
    mqtt_port: int = 4883
    mqtts_port: int = 4884
    mqtt_ws_port: int = Field(default=4885, description="MQTT over secure WebSocket (wss)")
    mqtt_url: str = Field(
        default="",
        description="the embedded broker as workers reach it (mqtt://public_host:mqtt_port)",
    )
    notification_retention: int = Field(
        default=7, gt=0, description="days the published notifications stay to replay"
    )
    snapshot_seconds: float = Field(
        default=5.0,
        ge=0,
        description="at most how old the catalog's counts on the console's dashboard and "
        "/metrics may be: read again in the background when older; 0 reads them at every "
        "request (exact, slow with a big catalog)",
    )
    metrics_public: bool = Field(
        default=True, description="the portal's /metrics without a login (else admins only)"
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=f"a worker's /metrics; 0 is off (`ecpds worker`: {WORKER_METRICS_PORT})",
    )
    worker_sdk_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=f"the Temporal SDK's worker metrics; 0 is off (`ecpds worker`: "
        f"{WORKER_SDK_METRICS_PORT})",
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None

    api_url: str = Field(default="", description="portal REST API, for the CLI")
    api_user: str = "admin"
    api_password: str = ""
    api_token: str = ""
    api_verify_tls: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get(CONFIG_ENV)
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)

    @field_validator("ftp_passive_ports")
    @classmethod
    def _passive_ports(cls, value: str) -> str:
        if value.strip():
            passive_range(value)
        return value.strip()

    @property
    def ftp_passive_range(self) -> range | None:
        return passive_range(self.ftp_passive_ports) if self.ftp_passive_ports else None

    # Derived locations: one place decides where state lives.
    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'catalog.db').resolve()}"

    @property
    def store_urls(self) -> list[str]:
        return self.store_locations or [str((self.home / "store").resolve())]

    @property
    def store_secrets_file(self) -> Path:
        return self.store_credentials_file or self.home / "store-credentials.json"

    @property
    def key_file(self) -> Path:
        return self.secret_key_file or self.home / "secret.key"

    @property
    def cert_file(self) -> Path:
        return self.tls_cert or self.home / "tls" / "cert.pem"

    @property
    def cert_key_file(self) -> Path:
        return self.tls_key or self.home / "tls" / "key.pem"

    def admin_password(self) -> str | None:
        """The password in admin_password_file (None without one); ValueError, one line,
        if it cannot be read or is too short."""
        path = self.admin_password_file
        if path is None:
            return None
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"admin_password_file {path}: {exc.strerror}") from None
        if len(password) < 8:
            raise ValueError(f"admin_password_file {path}: the password needs 8 characters")
        return password

    @property
    def admin_file(self) -> Path:
        """Credentials created on first start, readable by the operator only."""
        return self.home / "admin.toml"

    @property
    def portal_url(self) -> str:
        return self.api_url or f"https://{self.public_host}:{self.https_port}/api/v1"

    @property
    def embedded_broker_url(self) -> str:
        return self.mqtt_url or f"mqtt://{self.public_host}:{self.mqtt_port}"

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"


@lru_cache  # the process's own configuration, fixed for its life (load_settings resets it)
def get_settings() -> Settings:
    return Settings()


def with_worker_metrics(settings: Settings) -> Settings:
    """The settings of a worker process run from the command line: metrics ports on
    at their defaults unless the environment or the config file set them."""
    defaults = {
        name: port
        for name, port in (
            ("worker_metrics_port", WORKER_METRICS_PORT),
            ("worker_sdk_metrics_port", WORKER_SDK_METRICS_PORT),
        )
        if name not in settings.model_fields_set
    }
    return settings.model_copy(update=defaults)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, an optional TOML file and explicit overrides."""
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"config file {config} does not exist")
        os.environ[CONFIG_ENV] = str(config)
    get_settings.cache_clear()
    return Settings(**overrides)
