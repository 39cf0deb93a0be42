"""`datastorage playbooks import FILE.yaml`: the catalog file into playbook_catalog, embedded."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import yaml
from pydantic import ValidationError
from rich.progress import Progress

from app.audit.event import describe_validation_error
from app.catalog.embedding import Embedder
from app.catalog.freshness import count_stale, embed_stale
from app.catalog.playbook import MAX_CONTENT_BYTES, CatalogError, PlaybookEntry, content_bytes
from app.catalog.store import create_pool, upsert_entries

# Shipped in the package: what a first `datastorage run` on embedded defaults searches.
SAMPLE_CATALOG = Path(__file__).with_name("sample_catalog.yaml")


@dataclass(frozen=True)
class ImportSummary:
    entries: int
    playbooks: int
    changed: int
    embedded: int


def read_catalog(path: Path, *, max_content_bytes: int = MAX_CONTENT_BYTES) -> list[PlaybookEntry]:
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, list):
        raise CatalogError(f"{path}: expected a list of playbook versions")
    entries = []
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            raise CatalogError(f"entry {index}: expected a mapping")
        try:
            entries.append(PlaybookEntry.model_validate(item))
        except ValidationError as error:
            name = item.get("playbook_id", "?")
            raise CatalogError(f"entry {index} ({name}): {describe_validation_error(error)}") from None
        if content_bytes(entries[-1]) > max_content_bytes:
            raise CatalogError(
                f"entry {index} ({entries[-1].playbook_id} {entries[-1].version}): content: "
                f"{content_bytes(entries[-1])} bytes, more than the {max_content_bytes} allowed "
                "(DATASTORAGE_PLAYBOOK_MAX_CONTENT_BYTES)"
            )
    return entries


async def import_catalog(
    database_url: str,
    path: Path,
    *,
    embedder: Callable[[], Embedder],
    force: bool = False,
    max_content_bytes: int = MAX_CONTENT_BYTES,
) -> ImportSummary:
    """`embedder` gives the model when there is something to embed (loading it costs seconds)."""
    entries = read_catalog(path, max_content_bytes=max_content_bytes)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            changed = await upsert_entries(conn, entries, force=force)
            stale = await count_stale(conn)
        embedded = 0
        if stale:
            model = embedder()
            with Progress() as progress:
                task = progress.add_task("embedding", total=stale)
                while batch := await embed_stale(pool, model, limit=32, by="import"):
                    embedded += batch
                    progress.advance(task, batch)
    finally:
        await pool.close()
    playbooks = len(Counter(e.playbook_id for e in entries))
    return ImportSummary(len(entries), playbooks, changed, embedded)


async def import_sample_catalog(conn: asyncpg.Connection) -> int:
    """The sample catalog into an empty catalog (a catalog with any row is left alone); returns
    how many versions were written. Not embedded here: the API's worker embeds them in the
    background (app/catalog/freshness.py), so start-up does not wait for the model."""
    async with conn.transaction():
        # One `run` at a time imports: a second waits, then finds the rows.
        await conn.execute("LOCK TABLE playbook_catalog IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM playbook_catalog)"):
            return 0
        return await upsert_entries(conn, read_catalog(SAMPLE_CATALOG))
