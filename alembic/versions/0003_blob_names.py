"""blob and job-state references relative to their stores

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Rows that hold an absolute URI of the data folder that wrote them
(`file:///home/.../blobs/3f/ff/3fff<...>.npy`) lose their blobs when that folder moves, is
restored elsewhere or is copied to object storage. This revision rewrites each such value to
the blob's content-addressed name (`3fff<...>.npy`), which the configured blob store
resolves, and `jobs.state_uri` to the state file's name inside the job-state store. The
schema does not change, only the values.

Upgrade keeps the last path segment of every reference that is a URI. Downgrade cannot know
the folder the rows were written from; it writes the absolute URIs of the blob store that is
configured now (`-x blob_url=...`, else the settings: MICROSCOPE_BLOB_URL, or the data
folder's blobs/), with job states under its `job-state/`, which is where the older code looks.
The metadata inside state files of unfinished jobs keeps names, so finish or restart such jobs
before downgrading.
"""

from collections.abc import Iterator, Sequence
import re

import sqlalchemy as sa
from alembic import context, op


revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported, so this revision means the same thing whatever the
# store package says later.
BLOB_NAME = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9]{1,16}$")
STATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.npz$")

BLOB_COLUMNS = (
    ("images", "blob_uri"),
    ("dataset_examples", "crop_uri"),
    ("featureviz", "blob_uri"),
    ("word_embeddings", "vectors_uri"),
    ("word_embeddings", "mean_uri"),
    ("units", "direction_uri"),
)
STATE_COLUMNS = (("jobs", "state_uri"),)
CHUNK = 5000


def _online() -> None:
    if context.is_offline_mode():
        raise RuntimeError("revision 0003 rewrites values it has to read first; run it against the database, not with --sql")


def _rows(table: str, column: str, condition: str) -> Iterator[list[tuple[int, str]]]:
    """(id, value) of the rows whose value meets `condition`, a chunk at a time by id, so a
    store with millions of images is rewritten without holding them all in memory."""
    bind = op.get_bind()
    select = sa.text(
        f"SELECT id, {column} FROM {table} WHERE id > :after AND {column} IS NOT NULL AND {condition} "
        f"ORDER BY id LIMIT {CHUNK}"
    )
    after = -1
    while True:
        rows = [(row[0], row[1]) for row in bind.execute(select, {"after": after})]
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _rewrite(table: str, column: str, condition: str, new_value) -> None:
    update = sa.text(f"UPDATE {table} SET {column} = :value WHERE id = :id")
    for rows in _rows(table, column, condition):
        changes = [{"id": id_, "value": value} for id_, value in ((i, new_value(v)) for i, v in rows) if value is not None]
        if changes:
            op.get_bind().execute(update, changes)


def _last_segment(pattern: re.Pattern[str]):
    def name(value: str) -> str | None:
        last = value.rstrip("/").rsplit("/", 1)[-1]
        return last if pattern.match(last) else None  # not one of ours: left as it is

    return name


def upgrade() -> None:
    _online()
    for table, column in BLOB_COLUMNS:
        _rewrite(table, column, f"{column} LIKE '%/%'", _last_segment(BLOB_NAME))
    for table, column in STATE_COLUMNS:
        _rewrite(table, column, f"{column} LIKE '%/%'", _last_segment(STATE_NAME))


def _configured_blob_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("blob_url") or context.config.attributes.get("blob_url")
    if url:
        return url
    from app.settings import Settings

    return Settings().blob_url


def downgrade() -> None:
    _online()
    from fsspec.core import url_to_fs

    stores: dict[str, tuple] = {}

    def store() -> tuple:
        # Only resolved once a row needs it: an empty store downgrades without any settings.
        if not stores:
            blob_url = _configured_blob_url()
            stores["blobs"] = url_to_fs(blob_url)
            stores["states"] = url_to_fs(blob_url.rstrip("/") + "/job-state")
        return stores["blobs"], stores["states"]

    def blob_uri(name: str) -> str | None:
        if not BLOB_NAME.match(name):
            return None
        fs, root = store()[0]
        return fs.unstrip_protocol(f"{root.rstrip('/')}/{name[:2]}/{name[2:4]}/{name}")

    def state_uri(name: str) -> str | None:
        if not STATE_NAME.match(name):
            return None
        fs, root = store()[1]
        return fs.unstrip_protocol(f"{root.rstrip('/')}/{name}")

    for table, column in BLOB_COLUMNS:
        _rewrite(table, column, f"{column} NOT LIKE '%/%'", blob_uri)
    for table, column in STATE_COLUMNS:
        _rewrite(table, column, f"{column} NOT LIKE '%/%'", state_uri)
