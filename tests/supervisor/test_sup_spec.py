"""Child specs, flags, the restart window and the readiness helper on their own."""

import os

import pytest

from supervisor import (
    INFINITY,
    READY_FD_ENV,
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
    SupervisorCore,
    SupFlags,
    notify_ready,
)
from supervisor.intensity import RestartWindow
from supervisor.process import describe_exit


def test_child_spec_defaults_follow_otp() -> None:
    worker = ChildSpec("w", None)
    assert (worker.restart, worker.shutdown, worker.type) == (Restart.PERMANENT, 5000, ChildType.WORKER)
    assert ChildSpec("s", None, type="supervisor").shutdown == INFINITY


def test_sup_flags_default_to_one_for_one_with_one_restart_in_five_seconds() -> None:
    assert SupFlags() == SupFlags(Strategy.ONE_FOR_ONE, 1, 5)


@pytest.mark.parametrize(
    "options",
    [{"shutdown": -1}, {"shutdown": "soon"}, {"shutdown": 1.5}, {"restart": "sometimes"}, {"type": "manager"}],
)
def test_invalid_child_spec_is_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ChildSpec("c", None, **options)


@pytest.mark.parametrize(
    "options", [{"intensity": -1}, {"period": 0}, {"period": 1.5}, {"intensity": True}, {"strategy": "all"}]
)
def test_invalid_flags_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SupFlags(**options)


def test_child_ids_must_be_unique() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        SupervisorCore(SupFlags(), [ChildSpec("a", None), ChildSpec("a", None)], lambda: 0)


def test_simple_one_for_one_takes_exactly_one_spec() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SupervisorCore(SupFlags("simple_one_for_one"), [ChildSpec("a", None), ChildSpec("b", None)], lambda: 0)


@pytest.mark.parametrize(
    ("intensity", "period", "times", "allowed"),
    [
        (1, 5, [0, 0], [True, False]),
        (0, 5, [0], [False]),
        (2, 5, [0, 1, 5], [True, True, False]),
        (2, 5, [0, 1, 6], [True, True, True]),
        (1, 5, [0.1, 5.9], [True, False]),
        (1, 5, [0.9, 6.0], [True, True]),
        (1, 1, [10.0, 11.99, 13.0], [True, False, True]),  # 1.99 s apart, yet whole seconds 10 and 11
    ],
)
def test_restart_window_allows_intensity_restarts_per_period_in_whole_seconds(
    intensity: int, period: int, times: list[float], allowed: list[bool]
) -> None:
    window = RestartWindow(intensity, period)
    assert [window.add(time) for time in times] == allowed


def test_notify_ready_writes_one_line_and_closes_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    monkeypatch.setenv(READY_FD_ENV, str(write_fd))
    notify_ready('{"port": 1}')
    with os.fdopen(read_fd) as pipe:
        assert pipe.read() == 'ready {"port": 1}\n'
    assert READY_FD_ENV not in os.environ


def test_notify_ready_outside_a_supervisor_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(READY_FD_ENV, raising=False)
    notify_ready()


@pytest.mark.parametrize(
    ("returncode", "text"), [(0, "exit code 0"), (3, "exit code 3"), (-9, "killed by signal SIGKILL")]
)
def test_exit_status_is_described_readably(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text
