"""Exceptions raised by supervisors and the one task children raise to pick their exit reason."""

from collections.abc import Hashable

from supervisor.reasons import SHUTDOWN


class SupervisorError(Exception):
    """Base class for errors a supervisor reports to its caller."""


class ChildError(SupervisorError):
    """A dynamic-API request was refused; `reason` is OTP's error term, e.g. "not_found" or "running"."""

    def __init__(self, reason: object) -> None:
        super().__init__(reason)
        self.reason = reason


class StartError(SupervisorError):
    """A child failed to start, so the start (of the child or of the whole supervisor) failed."""

    def __init__(self, child_id: Hashable, reason: object) -> None:
        super().__init__(f"failed to start child {child_id!r}: {_describe(reason)}")
        self.child_id = child_id
        self.reason = reason


class SupervisorNotRunning(SupervisorError):
    """The supervisor has exited and takes no more requests."""


class ChildExit(Exception):
    """Raise from a task child to exit with an explicit OTP exit reason, e.g. ("shutdown", detail)."""

    def __init__(self, reason: object) -> None:
        super().__init__(reason)
        self.reason = reason


class RestartIntensityExceeded(ChildExit):
    """A supervisor gave up after too many restarts; its exit reason is shutdown, as in OTP."""

    def __init__(self, supervisor: str, child_id: Hashable, child_reason: object) -> None:
        super().__init__(SHUTDOWN)
        self.supervisor = supervisor
        self.child_id = child_id
        self.child_reason = child_reason

    def __str__(self) -> str:
        return (
            f"supervisor {self.supervisor!r} reached its maximum restart intensity;"
            f" last failure: child {self.child_id!r}: {_describe(self.child_reason)}"
        )


def _describe(reason: object) -> str:
    return reason if isinstance(reason, str) else repr(reason)
