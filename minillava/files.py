"""Reading and writing the project's files safely: one place for each of these, used by every layer.

- a bad input file is a one-line ``DataError`` naming the file and the line, never a traceback from json;
- a file is written *atomically* (temporary file, then rename): a reader, or a rerun after a kill, sees the old
  file or the new one, never half of one;
- an append-only JSONL log killed mid-write loses only its torn last line, which the next run cuts off and redoes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path


class DataError(ValueError):
    """Bad input data: the message names the file, the record and the field."""


def read_utf8(path: Path) -> str:
    """The file's text (a leading UTF-8 BOM dropped); a missing file or non-UTF-8 bytes are a one-line DataError."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:  # a directory, no permission ...
        raise DataError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None


def read_jsonl(path: str | Path) -> list[tuple[int, object]]:
    """(line number, value) for every non-blank line; a line that is not JSON is a one-line DataError."""
    path = Path(path)
    rows = []
    for lineno, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    return rows


def cut_torn_last_line(path: Path) -> int:
    """Cut off the last line of an append-only JSONL file if a kill tore it; return how many bytes went.

    A last line without its newline is torn unless it parses (then only the newline is added); a last line that
    does not parse is torn too. Anything wrong before the last line is corruption, left for the reader to report."""
    data = path.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        tail = data[data.rfind(b"\n") + 1:]
        if _parses(tail):
            with open(path, "ab") as f:
                f.write(b"\n")
            return 0
        keep -= len(tail)
    lines = data[:keep].splitlines()
    if lines and lines[-1].strip() and not _parses(lines[-1]):
        keep -= len(lines[-1]) + 1
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
    return len(data) - keep


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def write_atomic(path: str | Path, data: str | bytes, *, durable: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename, creating its folder.

    With ``durable`` the file and then its directory are fsynced, so the new file survives a power cut too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)
    if durable:
        with contextlib.suppress(OSError):  # directories cannot be opened for fsync on every platform
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return path


def write_json(path: str | Path, data: object, **dumps) -> Path:
    """``json.dumps(data, **dumps)``, written atomically."""
    return write_atomic(path, json.dumps(data, **dumps))


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """One JSON object per line, written atomically."""
    return write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def file_sha1(path: Path) -> str:
    """sha1 of a file's bytes, read in 1 MiB chunks (weights files are large)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
