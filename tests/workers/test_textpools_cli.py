"""`microscope textpools` as a user runs it: add, refuse a conflicting add in one line, list.
(Three processes: each costs a torch import.)"""

from __future__ import annotations

import pytest

from tests.test_cli import microscope, one_line_error


@pytest.mark.slow
def test_add_refuse_and_list(migrated_url, tmp_path):
    from tests.world_words import cli_env

    env = cli_env(migrated_url, tmp_path)
    added = microscope("textpools", "add", "world", "--world", env=env)
    assert added.returncode == 0 and "added: pool world" in added.stdout, added.stderr
    file = tmp_path / "colours.txt"
    file.write_text("red\ngreen\n")
    assert "exists with other texts" in one_line_error(microscope("textpools", "add", "world", "--file", str(file), env=env))
    listed = microscope("textpools", "list", env=env)
    assert listed.returncode == 0 and listed.stdout.split()[0] == "world" and "synthetic-world:vocabulary" in listed.stdout
