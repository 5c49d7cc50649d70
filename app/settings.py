"""Runtime settings: `MICROSCOPE_` environment variables, then an optional settings file.

The settings file is named by `MICROSCOPE_SETTINGS_FILE` (TOML or a dotenv file) so that a
deployment can keep its configuration in one place and still override any key from the
environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "clip-microscope"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MICROSCOPE_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Folder for the default SQLite file and blobs.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite inside data_dir.")
    blob_url: str = Field("", description="fsspec URL or folder for images; empty means data_dir/blobs.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    # Uploads (/probe and what later builds on it).
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted upload, in bytes.")
    max_upload_pixels: int = Field(4096 * 4096, ge=64 * 64, description="Largest accepted width x height.")
    # Live endpoints (probe, text-prompt search) run models: rate limited per client address.
    live_rate_limit: str = Field("30/minute", description="Per-client limit, in `limits` notation: '30/minute', '5/second'.")
    rate_limit_storage: str = Field("memory://", description="Where rate-limit counters live: memory:// or redis://host:port.")
    model_queue_size: int = Field(16, ge=1, description="Live requests waiting for the model service before 503.")
    # On a small CPU box, one torch thread leaves the other cores to the web threads (parsing
    # uploads, building answers) while the model runs, and never spins waiting for a core that
    # another process holds; torch's default takes every core.
    torch_threads: int = Field(0, ge=0, description="CPU threads of the model service's torch; 0: torch's default.")
    # How long a server process may reuse what the precompute jobs wrote about a unit (its page's
    # visualizations, examples, words, neighbours) and the page rendered from it before reading
    # them again; 0 turns it off. A job's commit is seen at once by every server process (see
    # store.queries.results_generation), and labels, notes and collections are read on every
    # view; the lifetime only bounds how long writes made outside the job loop take to show.
    page_cache_seconds: float = Field(600.0, ge=0)
    # How many rendered unit pages (for visitors who are not logged in) a process keeps.
    rendered_page_cache_entries: int = Field(2048, ge=1)
    # Login cookies: set to true when the site is served over HTTPS.
    cookie_secure: bool = False

    @model_validator(mode="after")
    def _fill_defaults_from_data_dir(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'microscope.db'}"
        if not self.blob_url:
            self.blob_url = str(self.data_dir / "blobs")
        return self

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
        settings_file = os.environ.get("MICROSCOPE_SETTINGS_FILE")
        if settings_file:
            path = Path(settings_file)
            if not path.is_file():
                raise ValueError(f"MICROSCOPE_SETTINGS_FILE points to {path}, which is not a file")
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(DotEnvSettingsSource(settings_cls, env_file=path, env_prefix="MICROSCOPE_"))
        return tuple(sources)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache
def get_settings() -> Settings:
    return Settings()
