"""gateway_supervisor_restarts_total from the supervisor's own reports.

The supervisor library logs OTP's reports on the "supervisor" logger (as OTP hands them to the logger); a handler
on it counts every child_terminated report by supervisor, child and exit reason. Every child of the gateway's tree
is permanent, so each such report is followed by a restart (or, past the intensity, by the supervisor giving up,
which its parent reports in turn). A generation's supervisor, workers@G, is counted as "workers".
"""

from __future__ import annotations

import logging

from gateway.metrics import RECORDER, SUPERVISOR_RESTARTS

REPORT = "child_terminated"


class RestartCounter(logging.Handler):
    """Counts child_terminated reports; the records' args are (supervisor, kind, child id, pid, reason)."""

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5 or str(args[1]) != REPORT:
            return
        supervisor, _, child, _, reason = args
        name = str(supervisor).split("@", 1)[0]
        RECORDER.count(SUPERVISOR_RESTARTS, (name, str(child), str(reason)[:120]))


def install_restart_counter() -> RestartCounter:
    """Attach the counter to the supervisor's logger (once per process)."""
    logger = logging.getLogger("supervisor")
    for handler in logger.handlers:
        if isinstance(handler, RestartCounter):
            return handler
    handler = RestartCounter(logging.NOTSET)
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.ERROR:  # the reports are logged at ERROR
        logger.setLevel(logging.ERROR)
    return handler
