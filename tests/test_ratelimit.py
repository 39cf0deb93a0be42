"""The rate limit per identity and pod, on the real Postgres and Redis: a token bucket each, 429 with
Retry-After and a problem body beyond it, a metric of refusals, health never limited, memory
bounded however many identities call."""

from prometheus_client import REGISTRY

from app.api.ratelimit import TokenBuckets, token_buckets
from tests.helpers import EVENTS, assert_problem, client_for


def refusals() -> float:
    return REGISTRY.get_sample_value("datastorage_rate_limited_requests_total") or 0.0


async def test_each_token_name_has_its_bucket_and_beyond_it_a_429_with_retry_after(settings, tmp_path):
    path = tmp_path / "tokens"
    path.write_text("a1 audit:read alpha\na2 audit:read alpha\nb1 audit:read beta\n")
    limited = settings.model_copy(update={"api_tokens_file": path, "rate_limit_per_s": 0.5, "rate_limit_burst": 3})
    before = refusals()
    async with client_for(limited) as api:
        # Two tokens, one NAME: one bucket of 3.
        for token in ("a1", "a2", "a1"):
            assert (await api.get(EVENTS, headers={"Authorization": f"Bearer {token}"})).status_code == 200
        refused = await api.get(EVENTS, headers={"Authorization": "Bearer a2"})
        body = assert_problem(refused, 429, "alpha")
        # One token comes back in 2 s (0.5 a second), less what refilled while the four requests
        # ran: Retry-After in whole seconds, the body exact.
        assert refused.headers["retry-after"] == "2"
        assert 1.5 < body["retry_after_s"] <= 2.0
        assert refusals() == before + 1
        # Another identity is not held back by alpha's traffic.
        assert (await api.get(EVENTS, headers={"Authorization": "Bearer b1"})).status_code == 200
        # Probes are never limited; the 401 of a stranger is not alpha's either.
        for _ in range(10):
            assert (await api.get("/healthz")).status_code == 200
            assert (await api.get("/readyz")).status_code != 429  # 503 while the model loads
        assert (await api.get(EVENTS)).status_code == 401


async def test_without_auth_the_client_address_is_the_identity(settings):
    async with client_for(settings.model_copy(update={"rate_limit_per_s": 1, "rate_limit_burst": 2})) as api:
        assert [(await api.get(EVENTS)).status_code for _ in range(3)] == [200, 200, 429]
        assert_problem(await api.get(EVENTS), 429, "127.0.0.1")


async def test_no_limit_unless_a_rate_is_set(api, settings):
    assert settings.rate_limit_per_s is None and token_buckets(None, 5) is None
    statuses = {(await api.get(EVENTS, params={"limit": 1})).status_code for _ in range(60)}
    assert statuses == {200}


def test_a_bucket_refills_at_the_rate_up_to_the_burst():
    now = [0.0]
    buckets = TokenBuckets(rate=2, burst=2, clock=lambda: now[0])
    assert [buckets.take("x") for _ in range(3)] == [0, 0, 0.5]
    now[0] += 0.5
    assert buckets.take("x") == 0 and buckets.take("x") == 0.5
    now[0] += 60  # a long pause refills to the burst, no more
    assert [buckets.take("x") for _ in range(3)] == [0, 0, 0.5]
    assert token_buckets(2.5, None).burst == 3  # the burst defaults to one second's worth


def test_memory_stays_bounded_idle_buckets_are_forgotten_without_changing_an_answer():
    now = [0.0]
    buckets = TokenBuckets(rate=10, burst=5, max_identities=1000, clock=lambda: now[0])
    for n in range(20_000):
        buckets.take(f"10.0.{n // 256}.{n % 256}")
    assert len(buckets) == 1000
    # Idle for burst/rate seconds, a bucket is full again: forgotten, and a new one answers the same.
    for _ in range(5):
        buckets.take("busy")
    now[0] += 0.51
    assert len(buckets) == 0
    assert [buckets.take("busy") for _ in range(6)] == [0, 0, 0, 0, 0, 0.1]
