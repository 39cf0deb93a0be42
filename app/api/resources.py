"""What the API's handlers share, created once per process by the app's lifespan."""

from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from app.audit.writer import AuditWriter
from app.catalog.embedding import EmbedderLoader
from app.catalog.text_index import TextIndexCache
from app.core.settings import Settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    # SQLAlchemy for audit queries built from filters; asyncpg (`pool`) for the catalog (vectors)
    # and for audit writes when Redis is down.
    engine: AsyncEngine
    pool: asyncpg.Pool
    redis: aioredis.Redis
    writer: AuditWriter
    embedder_loader: EmbedderLoader
    # The playbook search's term statistics, reloaded when the catalog changes.
    text_index: TextIndexCache


def resources(request: Request) -> Resources:
    found: Resources = request.app.state.resources
    return found
