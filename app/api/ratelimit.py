"""A rate limit per identity and pod: a token bucket each, refusals answered 429 with Retry-After.

Each identity (a token's NAME, a Kubernetes user, or the client address without auth: whatever
the auth middleware set) has a bucket of `DATASTORAGE_RATE_LIMIT_BURST` tokens refilled at
`DATASTORAGE_RATE_LIMIT_PER_S`; a request takes one or is refused. /healthz, /readyz and /metrics
are never limited (probes and scrapes must not be starved by clients).

Own code rather than a library: `limits` offers fixed and moving windows but no token bucket,
`token-bucket` keeps every key it has seen for ever, and `aiolimiter` waits instead of refusing.
Memory stays bounded by a TTLCache (cachetools): a bucket left alone for burst/rate seconds is
full again, exactly like a new one, so forgetting it changes nothing; beyond MAX_IDENTITIES the
least recently seen identity is forgotten (it then starts with a full bucket).
"""

import math
import time
from collections.abc import Callable

from cachetools import TTLCache
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.access import anonymous
from app.api.problems import Problem, problem_response
from app.core import metrics

MAX_IDENTITIES = 50_000
NEVER_LIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


class TokenBuckets:
    def __init__(
        self, rate: float, burst: int, max_identities: int = MAX_IDENTITIES, clock: Callable[[], float] = time.monotonic
    ):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        # identity -> (tokens, when counted); an entry expires burst/rate after its last use.
        self.buckets: TTLCache[str, tuple[float, float]] = TTLCache(max_identities, burst / rate, timer=clock)

    def take(self, identity: str) -> float:
        """Takes a token: 0 when there was one, else the seconds until there is."""
        now = self.clock()
        tokens, then = self.buckets.get(identity, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        # Set on every request, refused ones too: the entry's time to live counts from its last use.
        self.buckets[identity] = (tokens, now)
        return wait

    def __len__(self) -> int:
        return len(self.buckets)


class RateLimit:
    """ASGI middleware, inside the auth middleware (which says who is asking)."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets | None):
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.buckets is None or scope["type"] != "http" or scope["path"] in NEVER_LIMITED:
            await self.app(scope, receive, send)
            return
        identity = scope.get("state", {}).get("identity") or anonymous(scope)
        wait = self.buckets.take(identity.name)
        if not wait:
            await self.app(scope, receive, send)
            return
        metrics.RATE_LIMITED.inc()
        problem = Problem(
            429,
            f"rate limit exceeded for {identity.name}: {self.buckets.rate:g} requests a second, "
            f"bursts of {self.buckets.burst}; retry after {wait:.2f} s",
            # Retry-After takes whole seconds.
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            retry_after_s=round(wait, 3),
        )
        await problem_response(Request(scope), problem)(scope, receive, send)


def token_buckets(per_s: float | None, burst: int | None) -> TokenBuckets | None:
    """None (no limit) unless a rate is set; the burst defaults to one second's worth."""
    if per_s is None:
        return None
    return TokenBuckets(per_s, burst or max(1, math.ceil(per_s)))
