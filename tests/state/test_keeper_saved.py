"""The state keeper's state file (gateway/keeper/saved.py): what a keeper saves, what the next one begins from.

A keeper killed (kill -9) and restarted by the root began with every target enabled and every breaker closed: its
first snapshot undid the operators' drains and weights and the open circuits in every worker. The keeper now saves
those to a file in the run directory whenever they change (at once, then at most every SAVE_EVERY_S), and a new
keeper restores them before its first snapshot. A file that cannot be read is ignored; what the config no longer has
is dropped; what is saved of an upstream a source reports waits for its list. The processes are tested in
tests/test_keeper_faults.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from gateway.breaker.state import State
from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.keeper import process, saved
from gateway.keeper.saved import SavedBreaker, SavedState, SavedTarget, decode, encode, read_saved
from gateway.keeper.state import Keeper

CONFIG = """
_format_version: '3.0'
upstreams:
  - name: up
    targets: [{target: '127.0.0.1:9001'}, {target: '127.0.0.1:9002'}, {target: '127.0.0.1:9003'}]
  - name: dyn
    discovery: {type: consul, endpoints: ['127.0.0.1:8500'], service: svc}
services:
  - {name: s, host: up}
  - {name: d, host: dyn}
routes:
  - {name: r, service: s, paths: ['/']}
  - {name: q, service: d, paths: ['/d']}
plugins:
  - {name: circuit-breaker, service: s, config: {half_open_timeout: 60000}}
  - {name: circuit-breaker, service: d, config: {half_open_timeout: 60000}}
"""
A, B, C = "up|127.0.0.1:9001", "up|127.0.0.1:9002", "up|127.0.0.1:9003"
D = "dyn|10.0.0.1:8000"
WALL = 1_700_000_000.0  # the wall clock when the keeper under test saves or restores
OPEN_S = 60.0


def keeper() -> Keeper:
    return Keeper(parse_config(CONFIG), workers=2)


def admin(k: Keeper, cmd: str, **args: object) -> None:
    k.admin(cmd, dict(args), 0.0, WALL)


def snapshot_states(k: Keeper) -> tuple[dict[str, tuple[bool, int | None]], dict[str, State]]:
    """What a worker gets from the keeper's snapshot: (drained, weight) per target and each breaker's state."""
    snap = k.snapshot()
    return ({t.key: (t.drained, t.weight) for t in snap.targets}, {b.target: b.state for b in snap.breakers})


def discover(k: Keeper, *names: str) -> list[p.Msg]:
    return k.discover("dyn", [p.TargetInfo(n.rsplit(":", 1)[0], int(n.rsplit(":", 1)[1]), 100) for n in names])


# ---- what is saved -------------------------------------------------------------------------------------------------


def test_a_fresh_keeper_saves_nothing():
    assert keeper().saved(0.0, WALL) == SavedState()


def test_drains_weights_and_breakers_not_closed_are_saved_with_when_they_opened():
    k = keeper()
    admin(k, "targets", action="drain", target=A)
    admin(k, "targets", action="weight", target=B, weight=0)
    k.breakers.force_open(C, 10.0)
    k.breakers.restore(A, State.OPEN, 40.0)
    assert k.saved(50.0, WALL) == SavedState(
        targets={A: SavedTarget(drained=True), B: SavedTarget(weight=0)},
        breakers={A: SavedBreaker("open", WALL - 10.0), C: SavedBreaker("forced_open", WALL - 40.0)})


def test_an_operator_undoing_an_override_takes_it_out_of_the_file():
    k = keeper()
    admin(k, "targets", action="drain", target=A)
    admin(k, "breakers", action="open", target=A)
    admin(k, "targets", action="enable", target=A)
    admin(k, "breakers", action="reset", target=A)
    assert k.saved(0.0, WALL) == SavedState()


def test_a_half_open_breaker_is_saved_open_since_it_opened():
    k = keeper()
    k.breakers.restore(A, State.OPEN, 0.0)
    k.tick(OPEN_S)
    assert k.breakers.not_closed()[A][0] is State.HALF_OPEN
    assert k.saved(OPEN_S + 1, WALL).breakers == {A: SavedBreaker("open", WALL - OPEN_S - 1)}


# ---- what a new keeper begins from ---------------------------------------------------------------------------------


def test_a_new_keepers_first_snapshot_carries_what_the_last_one_saved():
    old = keeper()
    admin(old, "targets", action="drain", target=A)
    admin(old, "targets", action="weight", target=B, weight=0)
    admin(old, "breakers", action="open", target=C)
    old.breakers.restore(B, State.OPEN, 0.0)
    new = keeper()
    new.restore(decode(encode(old.saved(1.0, WALL))), 500.0, WALL + 2)
    targets, breakers = snapshot_states(new)
    assert targets == {A: (True, None), B: (False, 0), C: (False, None)}
    assert breakers == {A: State.CLOSED, B: State.OPEN, C: State.FORCED_OPEN}
    assert new.saved(500.0, WALL + 2) == old.saved(1.0, WALL)  # saved again as it was
    assert new.ticking()  # its timers run: the open breaker half-opens in time


def test_an_open_breakers_timeout_runs_from_when_it_opened_not_from_the_restart():
    new = keeper()
    new.restore(SavedState(breakers={A: SavedBreaker("open", WALL - OPEN_S + 1)}), 500.0, WALL)
    assert new.tick(500.5)[1] == []
    assert new.tick(501.0)[1] == [p.BreakersChanged(updates=[p.BreakerUpdate(A, State.HALF_OPEN)])]


def test_a_breaker_whose_timeout_ran_out_half_opens_at_the_first_tick():
    new = keeper()
    new.restore(SavedState(breakers={A: SavedBreaker("open", WALL - 3600)}), 500.0, WALL)
    assert new.breakers.tick(500.0)[0][0].state is State.HALF_OPEN


def test_a_wall_clock_set_back_gives_an_open_breaker_its_whole_timeout():
    new = keeper()
    new.restore(SavedState(breakers={A: SavedBreaker("open", WALL + 3600)}), 500.0, WALL)
    assert new.breakers.tick(500.0 + OPEN_S - 0.01)[0] == []
    assert new.breakers.tick(500.0 + OPEN_S)[0][0].state is State.HALF_OPEN


def test_targets_and_breakers_the_config_no_longer_has_are_dropped():
    new = keeper()
    gone = "up|127.0.0.1:9999"
    new.restore(SavedState(targets={gone: SavedTarget(drained=True), "old|h:1": SavedTarget(weight=1)},
                           breakers={gone: SavedBreaker("forced_open", WALL)}), 0.0, WALL)
    assert new.saved(0.0, WALL) == SavedState()
    assert gone not in snapshot_states(new)[0]


def test_what_is_saved_of_a_discovered_upstream_waits_for_its_list():
    new = keeper()
    other = "dyn|10.0.0.2:8000"
    saved_state = SavedState(targets={D: SavedTarget(drained=True), other: SavedTarget(weight=5)},
                             breakers={D: SavedBreaker("forced_open", WALL)})
    new.restore(saved_state, 0.0, WALL)
    assert new.saved(0.0, WALL) == saved_state  # kept while it waits: saved again if the keeper restarts once more
    published = discover(new, "10.0.0.1:8000")  # the source's list no longer has `other`
    targets = [t for m in published if isinstance(m, p.TargetsChanged) for t in m.targets]
    updates = [u for m in published if isinstance(m, p.BreakersChanged) for u in m.updates]
    assert [(t.key, t.drained) for t in targets] == [(D, True)]
    assert [(u.target, u.state) for u in updates] == [(D, State.FORCED_OPEN)]
    assert new.saved(0.0, WALL) == SavedState(targets={D: SavedTarget(drained=True)},
                                              breakers={D: SavedBreaker("forced_open", WALL)})


# ---- the file ------------------------------------------------------------------------------------------------------


def test_a_missing_file_is_a_gateway_just_started(tmp_path: Path):
    assert read_saved(str(tmp_path / "keeper.state.json")) is None


@pytest.mark.parametrize("text", [
    "", "{", "[]", '{"version": 2}', '{"targets": {"up|h:1": {"weight": 70000}}}',
    '{"targets": {"up|h:1": {"drained": "yes"}}}', '{"breakers": {"up|h:1": {"state": "closed", "opened": 1}}}',
    '{"breakers": {"up|h:1": {"state": "open"}}}', '{"unknown": 1}', '{"breakers": {"up|h:1": {"state": "open", '
    '"opened": 1e999}}}',
])
def test_a_file_that_cannot_be_parsed_is_logged_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            text: str):
    path = tmp_path / "keeper.state.json"
    path.write_text(text)
    with caplog.at_level(logging.ERROR, "gateway.keeper"):
        assert read_saved(str(path)) is None
    assert f"its state file {path} is not valid" in caplog.text


def test_a_file_that_cannot_be_read_is_logged_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "keeper.state.json"
    path.mkdir()  # (EISDIR: root reads any file, whatever its mode)
    with caplog.at_level(logging.ERROR, "gateway.keeper"):
        assert read_saved(str(path)) is None
    assert f"cannot read its state file {path}" in caplog.text


def test_a_file_larger_than_max_bytes_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "keeper.state.json"
    path.write_bytes(encode(SavedState(targets={A: SavedTarget(drained=True)})))
    assert read_saved(str(path)) is not None
    monkeypatch.setattr(saved, "MAX_BYTES", os.path.getsize(path) - 1)
    assert read_saved(str(path)) is None


async def test_the_file_is_written_at_once_then_at_most_every_save_every_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: object):
    path = tmp_path / "keeper.state.json"
    k = keeper()
    saver = process._Saver(k, str(path))
    writes: list[float] = []
    real = process.write_atomically

    def counted(where: str, text: str) -> None:
        writes.append(trio.current_time())
        real(where, text)

    monkeypatch.setattr(process, "write_atomically", counted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(saver.run)
        start = trio.current_time()
        admin(k, "targets", action="drain", target=A)
        saver.wake()
        await trio.sleep(0.001)
        assert writes == [start] and read_saved(str(path)) == k.saved(0.0, WALL)
        for target in (B, C):  # a flapping change: the next write waits for its turn, and takes both
            admin(k, "targets", action="drain", target=target)
            saver.wake()
            await trio.sleep(0.01)
        assert len(writes) == 1
        await trio.sleep(process.SAVE_EVERY_S)
        assert [round(t - start, 3) for t in writes] == [0.0, process.SAVE_EVERY_S]
        assert set(read_saved(str(path)).targets) == {A, B, C}  # type: ignore[union-attr]
        saver.wake()  # a publication that changed nothing the file holds: no write
        await trio.sleep(1)
        assert len(writes) == 2
        nursery.cancel_scope.cancel()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_file_that_cannot_be_written_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    k = keeper()
    saver = process._Saver(k, str(tmp_path / "missing" / "keeper.state.json"))
    with caplog.at_level(logging.ERROR, "gateway.keeper"):
        for target in (A, B):
            admin(k, "targets", action="drain", target=target)
            trio.run(_save, saver)
    assert caplog.text.count("cannot write its state file") == 1


async def _save(saver: process._Saver) -> None:
    saver.save()


async def test_a_new_keeper_restores_from_the_file_its_saver_finds(tmp_path: Path):
    path = tmp_path / "keeper.state.json"
    path.write_bytes(encode(SavedState(targets={A: SavedTarget(drained=True)},
                                       breakers={B: SavedBreaker("forced_open", 0.0)})))
    k = keeper()
    process._Saver(k, str(path)).restore()
    assert snapshot_states(k)[0][A] == (True, None) and snapshot_states(k)[1][B] is State.FORCED_OPEN
