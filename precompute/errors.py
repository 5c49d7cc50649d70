"""Errors a user can act on. The CLI prints them as one line; the API turns them into 4xx."""

from __future__ import annotations

from typing import Any


class MicroscopeError(Exception):
    """Base for every error caused by the user's input rather than by a bug."""


class UnknownArchitectureError(MicroscopeError):
    pass


class UnknownLayerError(MicroscopeError):
    pass


class CheckpointError(MicroscopeError):
    pass


class Problem(MicroscopeError):
    """A request that cannot be answered as asked: an HTTP status, a stable machine-readable
    `reason` ("unknown-model"), a sentence for people (`detail`) and any extra fields a
    program can use (`unknown_words`). The web app renders every Problem the same way, as
    JSON for the API and as an error page for the browser; the CLI prints its sentence.

    It lives here, in the lowest layer, so that the store's validation and the web app's
    refusals are one type.
    """

    def __init__(self, status: int, reason: str, detail: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body of the refusal: {detail, reason, ...extra}."""
        return {"detail": self.detail, "reason": self.reason, **self.extra}


class RetryLater(Problem):
    """A refusal that passes with time (429 over a rate limit, 503 while busy): it tells the
    client how many seconds to wait, in a Retry-After header."""

    def __init__(self, status: int, reason: str, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(status, reason, detail, headers={"Retry-After": str(retry_after)}, **extra)
        self.retry_after = retry_after
