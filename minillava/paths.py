"""Path arguments of the command line, checked before a command starts any work.

Each path argument says what it wants (``type=PathArg(...)`` in :mod:`minillava.cli`): a file or a folder to
read, or a file or a folder to write. :func:`check_paths` checks every one the chosen command was given and
raises a one-line :class:`~minillava.files.DataError` naming the flag, the path and what is wrong — a
file where a folder is wanted (or the other way round), nothing there, a place that cannot be written, or a
folder that holds something else (a model folder without a model; an output folder with other files in it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .files import DataError

MODEL_FILES = ("config.json", "model.safetensors")


class PathArg:
    """An argparse ``type=``: converts to :class:`~pathlib.Path` and remembers what kind of path is wanted.

    ``kind``: ``file`` / ``dir`` (to read; must exist), ``out_file`` / ``out_dir`` (to write; made if absent).
    ``holds``: for ``dir``, names it must all contain; for ``out_dir``, names of which a non-empty folder must
    contain at least one (it is then a folder this command wrote before, so rerunning it resumes or replaces).
    """

    def __init__(self, kind: str, holds: tuple[str, ...] = (), what: str = ""):
        assert kind in ("file", "dir", "out_file", "out_dir")
        self.kind, self.holds, self.what = kind, holds, what

    def __call__(self, text: str) -> Path:
        return Path(text)

    def check(self, flag: str, path: Path) -> None:
        where = f"{flag} {path}"
        wants = "a folder" if self.kind in ("dir", "out_dir") else "a file"
        if self.kind in ("dir", "out_dir") and path.exists() and not path.is_dir():
            raise DataError(f"{where}: is a file; {wants} is wanted")
        if self.kind in ("file", "out_file") and path.is_dir():
            raise DataError(f"{where}: is a folder; {wants} is wanted")
        if self.kind in ("file", "dir"):
            if not path.exists():
                raise DataError(f"{where}: no such {'file' if self.kind == 'file' else 'folder'}")
            if not os.access(path, os.R_OK):
                raise DataError(f"{where}: cannot be read (permission denied)")
            missing = [n for n in self.holds if not (path / n).exists()]
            if missing:
                raise DataError(f"{where}: holds something else, not {self.what or 'what is wanted'} "
                                f"(no {', '.join(missing)})")
            return
        _check_writable(where, path if self.kind == "out_dir" else path.parent)
        if self.kind == "out_dir" and self.holds and path.is_dir():
            present = sorted(p.name for p in path.iterdir())
            if present and not any(n in present for n in self.holds):
                shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
                raise DataError(f"{where}: holds other files ({shown}); give a new or empty folder, "
                                "or one this command wrote")


def _check_writable(where: str, folder: Path) -> None:
    """The folder, or the nearest part of its path that exists, must be a folder this process may write in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{where}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{where}: cannot write in {existing} (permission denied)")


def _chosen_actions(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The actions of the parser and of every sub-command chosen on this command line."""
    for action in parser._actions:  # argparse keeps them here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                yield from _chosen_actions(action.choices[chosen], args)
        else:
            yield action


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check every path argument given on this command line (see :class:`PathArg`); one-line DataError."""
    for action in _chosen_actions(parser, args):
        value = getattr(args, action.dest, None)
        if isinstance(action.type, PathArg) and value is not None:
            flag = action.option_strings[0] if action.option_strings else action.dest.upper()
            action.type.check(flag, value)
