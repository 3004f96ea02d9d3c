"""The shared file helpers: atomic writes, JSONL reading with one-line errors, and torn-last-line recovery."""

import json

import pytest

from minillava.files import DataError, cut_torn_last_line, file_sha1, read_jsonl, write_atomic, write_jsonl


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_atomic(path, "old")
    write_atomic(path, b"new", durable=True)
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_jsonl_round_trips_and_a_bad_line_is_a_one_line_error_naming_it(tmp_path):
    rows = [{"a": 1}, {"b": "é"}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    assert read_jsonl(path) == [(1, rows[0]), (2, rows[1])]
    path.write_text('{"a": 1}\n\n{oops\n')
    with pytest.raises(DataError, match=r"x.jsonl: line 3: invalid JSON"):
        read_jsonl(path)


@pytest.mark.parametrize("tail, cut", [(b'{"id": 3, "te', 13), (b'{"id": 3\n', 9), (b'{"id": 3}', 0), (b"", 0)])
def test_only_a_torn_last_line_is_cut_and_a_whole_one_gets_its_newline(tmp_path, tail, cut):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n' + tail)
    assert cut_torn_last_line(path) == cut
    ids = [row["id"] for _, row in read_jsonl(path)]
    assert ids == ([1, 2, 3] if tail == b'{"id": 3}' else [1, 2]) and path.read_bytes().endswith(b"\n")


def test_file_sha1_is_the_sha1_of_the_bytes(tmp_path):
    import hashlib
    path = tmp_path / "w.bin"
    path.write_bytes(json.dumps(list(range(10_000))).encode())
    assert file_sha1(path) == hashlib.sha1(path.read_bytes()).hexdigest()
