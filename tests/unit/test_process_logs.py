"""The suite's reading of a process's log (``tests.support.Proc``): each line parsed once, a
line seen whole only once its newline is written, and nothing missed or seen twice however the
writes fall between reads."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import Proc, _parsed


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


async def test_a_log_read_as_it_grows_sees_each_line_once(tmp_path: Path) -> None:
    log = tmp_path / "proc.log"
    proc = Proc("this", {}, log)  # a real process: prints twenty-odd plain lines and exits
    assert await proc.wait(20) == 0
    plain = proc.lines()
    assert plain and all(entry["event"] == "raw" for entry in plain)

    _append(log, json.dumps({"event": "a", "n": 1}).encode() + b"\n" + b'{"event": "a", "n": ')
    assert [e["n"] for e in proc.events("a")] == [1]  # half a line: the writer is mid-way
    assert proc.lines()[-1] == {"event": "raw", "text": '{"event": "a", "n": '}

    _append(log, b'2}\n{"event": "b"}\n')
    assert [e["n"] for e in proc.events("a")] == [1, 2]
    assert proc.events("b") == [{"event": "b"}]
    assert proc.events("c") == []
    assert len(proc.lines()) == len(plain) + 3

    _append(log, '{"event": "é"}\n[1, 2]\n'.encode())  # a character of two bytes; JSON, not an object
    assert proc.events("é") == [{"event": "é"}]
    assert proc.lines()[-1] == {"event": "raw", "text": "[1, 2]"}
    # The same as parsing the whole file at once.
    assert proc.lines() == [_parsed(line) for line in log.read_text().splitlines()]


async def test_a_line_once_read_is_not_read_again(tmp_path: Path) -> None:
    log = tmp_path / "proc.log"
    proc = Proc("this", {}, log)
    assert await proc.wait(20) == 0
    first = proc.lines()
    # The file's first line overwritten in place, same length: a reader that parsed the whole
    # log on every poll would show the new text; one that reads on from where it stopped shows
    # what it read then.
    text = log.read_bytes()
    end = text.index(b"\n")
    log.write_bytes(b"x" * end + text[end:])
    for _ in range(50):  # a wait polling the log
        assert proc.events("worker.ready") == []
    assert proc.lines() == first
