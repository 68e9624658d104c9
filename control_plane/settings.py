"""All control-plane configuration, from LITEFLEET_* environment variables (or a .env file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LITEFLEET_", env_file=".env", extra="ignore")

    state_dir: Path = Path("var")
    store_ip: str = "127.0.0.1"
    store_s3_port: int = 8333
    store_master_port: int = 9333
    store_volume_port: int = 8080
    store_filer_port: int = 8888
    bucket: str = "litefleet"
    s3_endpoint: str | None = None  # an external S3 (AWS, R2, MinIO); None: the embedded SeaweedFS
    s3_admin_key: str = "litefleet-admin"
    s3_admin_secret: SecretStr = SecretStr("")  # generated into state_dir on first `store up` when empty


def admin_secret(settings: Settings) -> str:
    """The admin secret: from the environment, else generated once and kept in state_dir (mode 0600)."""
    if settings.s3_admin_secret.get_secret_value():
        return settings.s3_admin_secret.get_secret_value()
    path = settings.state_dir / "store" / "admin-secret"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()
