"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.orm import Session
from starlette.requests import Request


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request, from the engine `create_app` put in app.state.

    Read-only handlers need no commit; handlers that write call `session.commit()` themselves
    so a failed request never half-commits.
    """
    with request.app.state.sessionmaker() as session:
        yield session
