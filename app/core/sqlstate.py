"""What a failed write means: wait and retry, or blame particular entries (docs/SQLSTATE.md).

* transient: the database or the network is unwell (connection lost, deadlock, serialization,
  lock timeout, too many connections, shutdown, read-only during fail-over), or the release is
  (SQLSTATE class 42: a schema not migrated yet, a syntax error, a missing grant). Retrying the
  same batch later will work; no entry is at fault.
* permanent: the data of some entry is at fault (SQLSTATE classes 22 and 23, 54000). Retrying
  cannot help; the entries that cause it are found by splitting the batch and dead-lettered.
* ambiguous: a cancelled statement (57014) or an error nobody classified. Retried a few times
  like a transient one, then handled like a permanent one, so that it cannot block the stream.
"""

import asyncio
import enum

import asyncpg
import redis
import sqlalchemy.exc


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    AMBIGUOUS = "ambiguous"


TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "25006",  # read_only_sql_transaction: a standby during fail-over
}
# syntax_error_or_access_rule_violation: a bad release (42601 a syntax error in our SQL, 42P01 a
# schema not migrated yet, 42501 a revoked grant). Every entry would fail the same way: retried
# until an operator fixes it (an alert says so), never split down into a flood of dead letters.
RELEASE_SQLSTATE_CLASSES = {"42"}
TRANSIENT_SQLSTATE_CLASSES = RELEASE_SQLSTATE_CLASSES | {
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


def is_release_error(error: BaseException) -> bool:
    """An error of the deployed code or schema, not of the data or the network."""
    sqlstate = getattr(error, "sqlstate", None) or ""
    return sqlstate[:2] in RELEASE_SQLSTATE_CLASSES


def describe(error: BaseException) -> str:
    """A short, single-line description: SQLSTATE and message, no SQL text."""
    sqlstate = getattr(error, "sqlstate", None)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{sqlstate}: {message}" if sqlstate else f"{type(error).__name__}: {message}"


# --- the HTTP side: is a store away (503 with Retry-After) or is it a bug (500)? ---------------

# Redis replies that refuse work for now, not for ever: out of memory, a replica during fail-over,
# too few replicas for WAIT/min-replicas, a failed RDB save (MISCONF), loading, a busy script.
REDIS_REFUSALS = {
    "OOM",
    "READONLY",
    "NOREPLICAS",
    "MASTERDOWN",
    "MISCONF",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
}
# redis-py prefixes a pipeline's error with the failed command and its arguments (the event).
_PIPELINE_PREFIX = "of pipeline caused error: "


def unwrap(error: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrappers (DBAPIError → asyncpg's error)."""
    while isinstance(error, sqlalchemy.exc.DBAPIError) and error.orig is not None:
        error = error.orig
    cause = error.__cause__
    if not isinstance(error, asyncpg.PostgresError) and isinstance(cause, (asyncpg.PostgresError, OSError)):
        return cause  # SQLAlchemy's asyncpg adapter raises its own error from asyncpg's
    return error


def redis_error_code(error: redis.RedisError) -> str:
    """The first word of a Redis error reply (`OOM`, `READONLY`, …), without the command."""
    if code := getattr(error, "status_code", None):  # redis-py keeps it for the replies it maps
        return str(code)
    message = str(error.args[0]) if error.args else ""
    message = message.rpartition(_PIPELINE_PREFIX)[2].lstrip("('\"")
    return message.split(" ", 1)[0] if message[:1].isupper() else ""


def store_unavailable(error: BaseException) -> bool:
    """True when a store is away or refuses work for a while (connection refused or lost, a
    timeout, an exhausted pool, fail-over, out of memory): the client should retry later."""
    error = unwrap(error)
    if isinstance(error, sqlalchemy.exc.TimeoutError):  # SQLAlchemy's pool: no connection in time
        return True
    if isinstance(error, redis.ResponseError):
        return redis_error_code(error) in REDIS_REFUSALS
    return classify(error) is ErrorKind.TRANSIENT or getattr(error, "sqlstate", None) in AMBIGUOUS_SQLSTATES


def describe_store_error(error: BaseException) -> str:
    """A log-safe, single-line description: never the command, the row or the event."""
    error = unwrap(error)
    if isinstance(error, redis.ResponseError):
        return f"{type(error).__name__}: {redis_error_code(error) or 'error reply'}"
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return describe(error)  # host and port at most
    if isinstance(error, redis.RedisError):
        return type(error).__name__
    return describe(error)
