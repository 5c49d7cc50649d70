"""Per-client rate limits for the expensive live endpoints (probe, text-prompt search).

Built on `limits` (the engine under slowapi) rather than slowapi's decorators: the limit is
read from the app's settings, not fixed at import, so every app (and every test) carries its
own, and a refusal renders as JSON or as an HTML page with the same 429 and Retry-After.
Counters live in memory by default or in Redis (`rate_limit_storage = "redis://host:port"`)
when several server processes must share them.
"""

from __future__ import annotations

import math
import time

from limits import parse, storage, strategies
from starlette.requests import Request

from precompute.errors import RetryLater


class RateLimiter:
    def __init__(self, spec: str, storage_uri: str = "memory://") -> None:
        self.limit = parse(spec)
        self.spec = spec
        self._strategy = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_uri))

    def hit(self, scope: str, client: str) -> None:
        if self._strategy.hit(self.limit, scope, client):
            return
        stats = self._strategy.get_window_stats(self.limit, scope, client)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RetryLater(429, "rate-limited", f"rate limit of {self.spec} per client exceeded; retry in {retry_after} s",
                         retry_after)


def client_key(request: Request) -> str:
    # Behind a proxy, uvicorn's proxy_headers has already put the forwarded address here.
    return request.client.host if request.client else "unknown"


def limit_live(request: Request) -> None:
    """FastAPI dependency for live endpoints: one hit per request, 429 when over the limit."""
    request.app.state.rate_limiter.hit("live", client_key(request))
