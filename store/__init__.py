"""The store: tables (models), engines and sessions (session), migrations, idempotent
reads/writes (repository) and the content-addressed blob store (blobs).

Kept import-free so that Alembic's env.py and the CLI can import one piece without the rest.
"""
