"""Label filters and label scoring, as Kubernaut does it.

Requested labels are hard filters in every search mode: a playbook passes when, for every
requested `name=value`, its own label `name` has that value or is the wildcard `*` (a playbook
that applies to any value says so with `*`). Among the playbooks that pass, an exact match counts
more than a wildcard one: the label score is the mean, over the requested labels, of
EXACT_MATCH (1.0) or WILDCARD_MATCH (0.5), so in [0, 1]; with no label requested there is no label
score (None). The same rule is written here once, for SQL (the catalog's rows) and for the
in-memory text index.
"""

import json

import numpy as np

WILDCARD = "*"
EXACT_MATCH = 1.0
WILDCARD_MATCH = 0.5


def sql_filter(requested: dict[str, str], params: list) -> str:
    """A WHERE condition on `labels` (appending its bind values to `params`): one `@>` pair per
    requested label, so the GIN index on labels can serve it."""
    conditions = []
    for name, value in sorted(requested.items()):
        params.append(json.dumps({name: value}))
        params.append(json.dumps({name: WILDCARD}))
        conditions.append(f"(labels @> ${len(params) - 1}::jsonb OR labels @> ${len(params)}::jsonb)")
    return " AND ".join(conditions) or "true"


def sql_score(requested: dict[str, str], params: list) -> str:
    """The label score of a row as a SQL expression (NULL when nothing is requested)."""
    if not requested:
        return "NULL::float8"
    params.append(json.dumps(requested))
    return (
        f"(SELECT avg(CASE WHEN labels ->> f.key = f.value THEN {EXACT_MATCH} "
        f"WHEN labels ->> f.key = '{WILDCARD}' THEN {WILDCARD_MATCH} ELSE 0 END) "
        f"FROM jsonb_each_text(${len(params)}::jsonb) AS f)::float8"
    )


def filter_mask(values: dict[str, np.ndarray], rows: int, requested: dict[str, str]) -> np.ndarray:
    """The rows passing the filters, given each label's values per row (`values[name]`, an object
    array with None where a row lacks the label)."""
    mask = np.ones(rows, dtype=bool)
    for name, value in requested.items():
        column = values.get(name)
        if column is None:
            return np.zeros(rows, dtype=bool)
        mask &= (column == value) | (column == WILDCARD)
    return mask
