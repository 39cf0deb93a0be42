"""What a failed write means: wait and retry, or blame particular entries (docs/SQLSTATE.md).

* transient: the database or the network is unwell (connection lost, deadlock, serialization,
  lock timeout, too many connections, shutdown, read-only during fail-over, or a schema that is
  not migrated yet). Retrying the same batch later will work; no entry is at fault.
* permanent: the data of some entry is at fault (SQLSTATE classes 22 and 23, 54000). Retrying
  cannot help; the entries that cause it are found by splitting the batch and dead-lettered.
* ambiguous: a cancelled statement (57014) or an error nobody classified. Retried a few times
  like a transient one, then handled like a permanent one, so that it cannot block the stream.
"""

import asyncio
import enum

import asyncpg
import redis


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    AMBIGUOUS = "ambiguous"


TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "25006",  # read_only_sql_transaction: a standby during fail-over
    "42P01",  # undefined_table: schema not migrated yet; an operator's fix, not the entries'
    "42703",  # undefined_column: likewise
    "42883",  # undefined_function: likewise
}
TRANSIENT_SQLSTATE_CLASSES = {
    "08",  # connection_exception
    "53",  # insufficient_resources (53300 too_many_connections, disk full, out of memory)
    "57",  # operator_intervention (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now)
    "58",  # system_error (I/O)
}
PERMANENT_SQLSTATES = {"54000"}  # program_limit_exceeded: a value too large to index
PERMANENT_SQLSTATE_CLASSES = {
    "22",  # data_exception (22P02 invalid text, 22001 too long, 22021 bad encoding, ...)
    "23",  # integrity_constraint_violation
}
AMBIGUOUS_SQLSTATES = {"57014"}  # query_canceled: a timeout, or a statement too heavy to finish


def classify(error: BaseException) -> ErrorKind:
    if isinstance(error, asyncpg.PostgresError):
        return classify_sqlstate(error.sqlstate or "")
    if isinstance(error, asyncpg.DataError):
        # asyncpg refused to encode a value: the entry's fault.
        return ErrorKind.PERMANENT
    if isinstance(
        error, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, redis.ConnectionError, redis.TimeoutError)
    ):
        return ErrorKind.TRANSIENT
    return ErrorKind.AMBIGUOUS


def classify_sqlstate(sqlstate: str) -> ErrorKind:
    if sqlstate in AMBIGUOUS_SQLSTATES:
        return ErrorKind.AMBIGUOUS
    if sqlstate in TRANSIENT_SQLSTATES or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES:
        return ErrorKind.TRANSIENT
    if sqlstate in PERMANENT_SQLSTATES or sqlstate[:2] in PERMANENT_SQLSTATE_CLASSES:
        return ErrorKind.PERMANENT
    return ErrorKind.AMBIGUOUS


def describe(error: BaseException) -> str:
    """A short, single-line description: SQLSTATE and message, no SQL text."""
    sqlstate = getattr(error, "sqlstate", None)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{sqlstate}: {message}" if sqlstate else f"{type(error).__name__}: {message}"
