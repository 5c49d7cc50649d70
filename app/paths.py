"""Where the web's non-package folders (templates, static) live: beside the packages in a
source checkout, under app/_bundled in a wheel."""

from pathlib import Path

from store.paths import beside_or_bundled

_APP_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    return beside_or_bundled(_APP_DIR, "templates")


def static_dir() -> Path:
    return beside_or_bundled(_APP_DIR, "static")
