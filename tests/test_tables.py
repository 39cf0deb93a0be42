"""The Core table definition the audit queries are built from matches the migrated schema."""

from app.tables import audit_events


async def test_core_columns_are_the_schema_columns(db):
    table = audit_events
    rows = await db.fetch(
        "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = $1",
        table.name,
    )
    assert {r["column_name"] for r in rows} == {c.name for c in table.columns}
    nullable = {r["column_name"]: r["is_nullable"] == "YES" for r in rows}
    for column in table.columns:
        if not column.nullable:
            assert not nullable[column.name], column.name
