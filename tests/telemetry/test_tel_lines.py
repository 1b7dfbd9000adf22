"""The line writer: whole lines from many processes never interleave, rotation, broken files, lazy formatting."""

from __future__ import annotations

import json
import multiprocessing
import os

import trio

from gateway.telemetry.lines import DROPPED, Lines

LINES_PER_PROCESS = 3000


def _write_many(path: str, who: int) -> None:
    lines = Lines()
    writer = lines.writer_for(path)
    for i in range(LINES_PER_PROCESS):
        writer.put(json.dumps({"who": who, "i": i, "pad": "x" * (i % 300)}).encode() + b"\n")
        if i % 7 == 0:  # batches of varied sizes
            lines.flush()
    lines.close()


def test_lines_from_four_processes_never_interleave(tmp_path):
    path = str(tmp_path / "access.log")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, who)) for who in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seen = [json.loads(line) for line in open(path, encoding="utf-8")]  # every line parses: none was cut or mixed
    assert len(seen) == 4 * LINES_PER_PROCESS
    for who in range(4):
        assert [d["i"] for d in seen if d["who"] == who] == list(range(LINES_PER_PROCESS))


def test_reopen_follows_a_rotated_file(tmp_path):
    path = tmp_path / "access.log"
    lines = Lines()
    writer = lines.writer_for(str(path))
    writer.put(b"one\n")
    lines.flush()
    path.rename(tmp_path / "access.log.1")
    writer.put(b"two\n")
    lines.flush()  # still the old file, as nginx before its reopen
    lines.reopen()
    writer.put(b"three\n")
    lines.flush()
    assert (tmp_path / "access.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"


def test_reopen_each_write_follows_rotation_without_a_signal(tmp_path):
    path = tmp_path / "file.log"
    lines = Lines()
    writer = lines.writer_for(str(path))
    writer.put(b"one\n", reopen=True)
    lines.flush()
    path.rename(tmp_path / "file.log.1")
    writer.put(b"two\n", reopen=True)
    lines.flush()
    assert path.read_text() == "two\n"


def test_reopen_is_decided_by_each_write_not_kept_by_the_file(tmp_path):
    """Kong's file-log decides per write from the config of the plugin writing: after a reload to `reopen: false`
    (or beside another instance without it), the file is kept open."""
    path = tmp_path / "file.log"
    lines = Lines()
    writer = lines.writer_for(str(path))
    writer.put(b"one\n", reopen=True)
    lines.flush()
    writer.put(b"two\n")
    lines.flush()
    path.rename(tmp_path / "file.log.1")
    writer.put(b"three\n")
    lines.flush()
    assert (tmp_path / "file.log.1").read_text() == "one\ntwo\nthree\n"  # still open: no reopen asked


def test_a_file_that_cannot_be_opened_drops_lines_and_counts_them(tmp_path, caplog):
    from gateway.metrics import RECORDER

    path = str(tmp_path / "missing-dir" / "x.log")
    lines = Lines()
    writer = lines.writer_for(path)
    RECORDER.flush()
    before = DROPPED.labels(path)._value.get()
    for _ in range(3):
        writer.put(b"lost\n")
        assert lines.flush() == 0
    RECORDER.flush()
    assert DROPPED.labels(path)._value.get() - before == 3
    assert len([r for r in caplog.records if "cannot open" in r.getMessage()]) == 1  # once per reason


def test_deferred_entries_are_formatted_when_written(tmp_path):
    path = tmp_path / "d.log"
    lines = Lines()
    writer = lines.writer_for(str(path))
    formatted = []

    def fmt(item: int) -> bytes:
        formatted.append(item)
        return b"%d\n" % item

    writer.defer(fmt, 1)
    writer.defer(fmt, 2)
    assert formatted == [] and writer.pending == 2
    lines.flush()
    assert formatted == [1, 2] and path.read_text() == "1\n2\n"


async def test_the_writer_task_writes_a_batch_without_being_asked(tmp_path):
    path = tmp_path / "t.log"
    lines = Lines()
    writer = lines.writer_for(str(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(lines.run)
        for i in range(5):
            writer.put(b"%d\n" % i)
        await trio.sleep(0.01)
        assert path.read_text() == "0\n1\n2\n3\n4\n"
        writer.put(b"last\n")
        nursery.cancel_scope.cancel()
    assert path.read_text().endswith("last\n")  # what was pending when cancelled is written on the way out


def test_lines_can_go_to_a_pipe(tmp_path):
    r, w = os.pipe()
    lines = Lines()
    writer = lines.writer_for(f"/proc/self/fd/{w}")
    writer.put(b"a\n")
    writer.put(b"b\n")
    lines.flush()
    os.close(w)
    assert os.read(r, 100) == b"a\nb\n"
    lines.close()
    os.close(r)
