"""`datastorage playbooks import FILE.yaml`: the catalog file into playbook_catalog, embedded."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError
from rich.progress import Progress

from app.audit.event import describe_validation_error
from app.catalog.embedding import Embedder
from app.catalog.freshness import count_stale, embed_stale
from app.catalog.playbook import CatalogError, PlaybookEntry
from app.catalog.store import create_pool, upsert_entries


@dataclass(frozen=True)
class ImportSummary:
    entries: int
    playbooks: int
    changed: int
    embedded: int


def read_catalog(path: Path) -> list[PlaybookEntry]:
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
    return entries


async def import_catalog(
    database_url: str, path: Path, *, embedder: Callable[[], Embedder], force: bool = False
) -> ImportSummary:
    """`embedder` gives the model when there is something to embed (loading it costs seconds)."""
    entries = read_catalog(path)
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
