"""Where the migrations (the top-level alembic/ folder and alembic.ini) live.

In a source checkout they sit beside the packages; in a wheel they ride under store/_bundled.
"""

from pathlib import Path

_STORE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _STORE_DIR.parent
_BUNDLED = _STORE_DIR / "_bundled"


def _first_existing(name: str) -> Path:
    for base in (_REPO_ROOT, _BUNDLED):
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} not found beside the store package nor in its bundle")


def alembic_dir() -> Path:
    return _first_existing("alembic")


def alembic_ini() -> Path:
    return _first_existing("alembic.ini")
