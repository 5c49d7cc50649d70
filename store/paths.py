"""Where the design's non-package folders live: the migrations (alembic/, alembic.ini) for the
store, and through `beside_or_bundled` the web's templates and static files for the app.

In a source checkout they sit beside the packages; in a wheel they ride inside the package
that uses them, under `_bundled` (pyproject.toml's force-include).
"""

from pathlib import Path

_STORE_DIR = Path(__file__).resolve().parent


def beside_or_bundled(package_dir: Path, name: str) -> Path:
    """The folder or file `name` beside the package at `package_dir` (a checkout), else in the
    package's own bundle (a wheel)."""
    for base in (package_dir.parent, package_dir / "_bundled"):
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} not found beside the {package_dir.name} package nor in its bundle")


def alembic_dir() -> Path:
    return beside_or_bundled(_STORE_DIR, "alembic")


def alembic_ini() -> Path:
    return beside_or_bundled(_STORE_DIR, "alembic.ini")
