"""Where the web's non-package folders (templates, static) live.

In a source checkout they sit beside the packages; in a wheel they ride under app/_bundled.
"""

from pathlib import Path

_APP_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _APP_DIR.parent
_BUNDLED = _APP_DIR / "_bundled"


def _first_existing(name: str) -> Path:
    for base in (_REPO_ROOT, _BUNDLED):
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} not found beside the app package nor in its bundle")


def templates_dir() -> Path:
    return _first_existing("templates")


def static_dir() -> Path:
    return _first_existing("static")
