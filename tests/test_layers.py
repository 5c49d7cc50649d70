"""The one-way layering of DESIGN.md, checked on the code as it is: cli > app | workers > store >
precompute. A back-arrow anywhere (even an import inside a function) fails here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contract_holds() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_compute_library_pulls_in_neither_the_database_nor_the_web() -> None:
    # Every module of precompute, imported in a fresh interpreter: none of them may drag in a
    # database or web library, even indirectly.
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import precompute
        names = [m.name for m in pkgutil.walk_packages(precompute.__path__, "precompute.")]
        for name in names:
            importlib.import_module(name)
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"sqlalchemy", "fastapi", "starlette", "alembic", "store", "app", "workers", "cli"})
        print(len(names), ",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    count, heavy = result.stdout.split()[0], result.stdout.strip().partition(" ")[2]
    assert int(count) > 20  # the walk really imported the library's modules
    assert heavy == "", f"importing precompute pulled in {heavy}"


def test_every_layer_ships_in_the_wheel_and_the_image() -> None:
    # A package missing from the wheel or the Docker image installs fine and fails at the first
    # import of it: the layers named by the contract are exactly what both must carry.
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = set(project["tool"]["importlinter"]["root_packages"])
    assert set(project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]) == layers
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), flags=re.M))
    assert layers <= copied, f"the Dockerfile does not copy {sorted(layers - copied)}"
    assert all((ROOT / name / "__init__.py").is_file() for name in layers)


def test_a_wheel_carries_its_migrations_templates_and_static(tmp_path: Path) -> None:
    # Outside a checkout, the store finds alembic/ and the app its templates and static files
    # inside the installed packages; a wheel missing them installs fine and fails at the first
    # `db upgrade` or page.
    import zipfile

    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("clip_microscope-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = textwrap.dedent("""
        from app.paths import static_dir, templates_dir
        from store.paths import alembic_dir, alembic_ini
        for path in (alembic_dir() / "env.py", alembic_ini(), templates_dir() / "unit.html", static_dir() / "style.css"):
            print(path.resolve())
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = result.stdout.split()
    assert len(found) == 4 and all(Path(p).is_file() and Path(p).is_relative_to(site) for p in found), found
