"""Classifying write failures by SQLSTATE (docs/SQLSTATE.md, after the plan's error tables)."""


import asyncpg
import pytest
import redis

from app.core import sqlstate
from app.core.settings import PROJECT_ROOT
from app.core.sqlstate import ErrorKind, classify, classify_sqlstate


@pytest.mark.parametrize("sqlstate", ["40P01", "40001", "55P03", "53300", "57P01", "57P02", "57P03",
                                      "08006", "08001", "25006", "42P01", "58030", "53100",
                                      "42601", "42501", "42703"])
def test_transient_sqlstates(sqlstate):
    assert classify_sqlstate(sqlstate) is ErrorKind.TRANSIENT


@pytest.mark.parametrize("sqlstate", ["23505", "23503", "23514", "23502", "22P02", "22001", "22021",
                                      "54000"])
def test_permanent_sqlstates(sqlstate):
    assert classify_sqlstate(sqlstate) is ErrorKind.PERMANENT


@pytest.mark.parametrize("sqlstate", ["57014", "XX000", "P0001"])
def test_ambiguous_sqlstates(sqlstate):
    assert classify_sqlstate(sqlstate) is ErrorKind.AMBIGUOUS


def test_class_42_is_the_releases_fault_not_the_entries():
    assert sqlstate.is_release_error(asyncpg.PostgresSyntaxError("syntax error at or near"))
    assert sqlstate.is_release_error(asyncpg.UndefinedColumnError("column x does not exist"))
    assert not sqlstate.is_release_error(asyncpg.CheckViolationError("check"))
    assert not sqlstate.is_release_error(ConnectionRefusedError())


def test_connection_failures_are_transient():
    for error in (ConnectionRefusedError(), TimeoutError(),
                  asyncpg.ConnectionDoesNotExistError("closed"), redis.ConnectionError("down")):
        assert classify(error) is ErrorKind.TRANSIENT


def test_values_asyncpg_cannot_encode_are_the_entries_fault():
    assert classify(asyncpg.DataError("invalid input")) is ErrorKind.PERMANENT


def test_postgres_errors_are_classified_by_their_sqlstate():
    assert classify(asyncpg.DeadlockDetectedError("deadlock")) is ErrorKind.TRANSIENT
    assert classify(asyncpg.CheckViolationError("check")) is ErrorKind.PERMANENT
    assert classify(asyncpg.QueryCanceledError("cancelled")) is ErrorKind.AMBIGUOUS


def test_the_documented_table_is_the_classification():
    """docs/SQLSTATE.md lists exactly the codes and classes the code classifies, with their kind."""
    lines = (PROJECT_ROOT / "docs" / "SQLSTATE.md").read_text().splitlines()
    start = lines.index("| SQLSTATE | name | kind | why |") + 2
    documented = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        code, _, kind, _ = (cell.strip() for cell in line.strip("|").split("|", 3))
        documented[code] = kind
    in_code = {
        **{code: "transient" for code in sqlstate.TRANSIENT_SQLSTATES},
        **{f"{cls}xxx": "transient" for cls in sqlstate.TRANSIENT_SQLSTATE_CLASSES},
        **{code: "permanent" for code in sqlstate.PERMANENT_SQLSTATES},
        **{f"{cls}xxx": "permanent" for cls in sqlstate.PERMANENT_SQLSTATE_CLASSES},
        **{code: "ambiguous" for code in sqlstate.AMBIGUOUS_SQLSTATES},
    }
    assert documented == in_code
