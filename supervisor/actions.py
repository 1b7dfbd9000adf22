"""What the policy asks its runtime to do; the runtime answers Start and Terminate through the policy."""

from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum

from supervisor.spec import ChildSpec, Shutdown


@dataclass(frozen=True)
class Start:
    """Start a child from `spec` (with simple_one_for_one extra `args`); answer started() or start_failed()."""

    key: Hashable
    spec: ChildSpec
    args: tuple[object, ...] = ()


@dataclass(frozen=True)
class Terminate:
    """Stop the child running as `pid` as its `shutdown` says; answer terminated().

    Terminate actions returned together may be carried out concurrently.
    """

    child_id: Hashable
    pid: object
    shutdown: Shutdown


@dataclass(frozen=True)
class Initialized:
    """All children started: the supervisor's own start succeeded."""


@dataclass(frozen=True)
class Exit:
    """All children are stopped; the supervisor ends: NORMAL, SHUTDOWN, or an exception to raise."""

    reason: object


@dataclass(frozen=True)
class Reply:
    """Answer the API request being handled: its result, or the SupervisorError to raise."""

    value: object


@dataclass(frozen=True)
class RetryLater:
    """Queue retry(key) behind the events already waiting, as OTP's try_again_restart does."""

    key: Hashable


class ReportKind(StrEnum):
    """OTP's supervisor reports: a progress report and the error contexts."""

    STARTED = "started"
    CHILD_TERMINATED = "child_terminated"
    START_ERROR = "start_error"
    SHUTDOWN_ERROR = "shutdown_error"
    MAX_INTENSITY = "reached_max_restart_intensity"


@dataclass(frozen=True)
class Report:
    """Something worth logging about child `child_id`, running (or last running) as `pid`."""

    kind: ReportKind
    child_id: Hashable
    reason: object = None
    pid: object = None


Action = Start | Terminate | Initialized | Exit | Reply | RetryLater | Report
