"""The worker's log: a routine failure (a refused connection, a timeout, a login a remote
host refused) is one line; a bug keeps its traceback; a send that waits for a busy host's
free connection is no failure and not logged."""

from __future__ import annotations

import logging

from temporalio.exceptions import ApplicationError

from ecpds.core.engine import HOST_BUSY
from ecpds.core.protocols import ProtocolError

# The SDK logs every failed activity attempt here, with its traceback.
SDK_LOGGERS = ("temporalio.activity", "temporalio.worker._activity")


def is_routine(exc: BaseException) -> bool:
    """What the activities understood (they raise ApplicationError with a one-line
    message) and network errors that reached the SDK as they were."""
    return isinstance(exc, ApplicationError | ProtocolError | OSError)


def one_line(exc: BaseException) -> str:
    kind = exc.type if isinstance(exc, ApplicationError) and exc.type else type(exc).__name__
    return f"{kind}: {' '.join(str(exc).split())}"


class RoutineFailures(logging.Filter):
    """Drops the traceback of a routine failure and puts its message on the record's line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ApplicationError) and exc.type == HOST_BUSY:
            return False
        if exc is not None and is_routine(exc):
            record.msg, record.args = f"{record.getMessage()}: {one_line(exc)}", None
            record.exc_info, record.exc_text = None, None
        return True


def quiet_routine_failures() -> None:
    """Install the filter on the SDK's loggers (once, however often it is called)."""
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineFailures) for f in logger.filters):
            logger.addFilter(RoutineFailures())
