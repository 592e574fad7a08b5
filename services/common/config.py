"""Settings shared by every process. Each service subclasses `ServiceSettings`.

Configuration comes only from `EASEL_*` environment variables and is validated at start: a bad
value stops the process with one line naming the variable (see `load_settings`).
"""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# Local defaults from ARCHITECTURE.md; the embedded Postgres and NATS listen here.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:55432/easel"
DEFAULT_NATS_URL = "nats://127.0.0.1:14222"


class CommonSettings(BaseSettings):
    """What every process reads."""

    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="ignore", frozen=True)

    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Seconds a stopping process gives in-flight work before it gives up on it.
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    # Deadline for one unary gRPC call from this process.
    rpc_timeout_s: float = Field(default=10.0, gt=0)
    auth_target: str = "127.0.0.1:50051"
    gallery_target: str = "127.0.0.1:50052"
    inference_target: str = "127.0.0.1:50053"


class GrpcServiceSettings(CommonSettings):
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)


class DatabaseSettings(GrpcServiceSettings):
    database_url: str = DEFAULT_DATABASE_URL
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)


S = TypeVar("S", bound=BaseSettings)


class SettingsError(SystemExit):
    """Stops the process with one line that names the setting and what to do."""

    def __init__(self, setting: str, what_to_do: str) -> None:
        self.setting = setting
        self.line = f"easel: bad setting {setting}: {what_to_do}"
        super().__init__(self.line)


def env_name(cls: type[BaseSettings], field: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return (prefix + field).upper()


def load_settings(cls: type[S]) -> S:
    """Builds the settings or exits with a line per bad variable (never a traceback)."""
    try:
        return cls()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"easel: bad setting {env_name(cls, field)}: {err['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
