"""Every path argument of every command answers a bad path in one line, before any work starts.

The cases are drawn from the parser itself (every argument whose type is a PathArg), so a new command's paths
are covered as soon as it declares them.
"""

from __future__ import annotations

import os

import pytest

from minillava import paths
from minillava.cli import build_parser, main

REQUIRED_VALUES = {"--limit": "1", "--stage": "1", "--split": "train"}  # required arguments that are not paths


def path_arguments():
    """(command words, action) for every PathArg argument of every (sub)command."""
    def walk(parser, words):
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*words, name])
            elif isinstance(action.type, paths.PathArg):
                yield words, parser, action
    return list(walk(build_parser(), []))


PATH_ARGS = path_arguments()


def valid(kind: paths.PathArg, root, name: str):
    """A path that passes ``kind``'s check."""
    p = root / "valid" / name
    if kind.kind == "file":
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    elif kind.kind == "dir":
        p.mkdir(parents=True, exist_ok=True)
        for n in kind.holds:
            (p / n).write_text("")
    elif kind.kind == "out_file":
        p = p / "out.json"
    return p


def command_line(words, parser, root, replace=None):
    """Every required argument of the command, paths valid, except ``replace = (action, path)``."""
    argv = list(words)
    for action in parser._actions:
        if replace and action is replace[0]:
            value = replace[1]
        elif isinstance(action.type, paths.PathArg) and (action.required or not action.option_strings):
            value = valid(action.type, root, action.dest)
        elif action.required and action.option_strings:  # (a nargs="*" positional such as key=value overrides
            value = REQUIRED_VALUES[action.option_strings[0]]  # counts as required; it is left empty)
        else:
            continue
        argv += [action.option_strings[0], str(value)] if action.option_strings else [str(value)]
    return argv


def ids(cases):
    return [" ".join(w) + " " + (a.option_strings[0] if a.option_strings else a.dest) for w, _, a in cases]


def run_bad(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_no_path_argument_is_left_without_a_kind():
    from pathlib import Path

    def walk(parser):
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from walk(sub)
            else:
                yield action
    assert [a.dest for a in walk(build_parser()) if a.type is Path] == []
    assert len(PATH_ARGS) >= 30  # every command's paths (eval alone has 7)


@pytest.mark.parametrize("words, parser, action", PATH_ARGS, ids=ids(PATH_ARGS))
def test_valid_paths_pass(words, parser, action, tmp_path):
    argv = command_line(words, parser, tmp_path, (action, valid(action.type, tmp_path, "the_one")))
    built = build_parser()
    paths.check_paths(built, built.parse_args(argv))  # raises nothing


@pytest.mark.parametrize("words, parser, action", PATH_ARGS, ids=ids(PATH_ARGS))
def test_a_file_where_a_folder_is_wanted_and_the_other_way_round(words, parser, action, tmp_path, capsys):
    if action.type.kind in ("dir", "out_dir"):
        bad = tmp_path / "a_file"
        bad.write_text("not a folder")
        needle = "is a file; a folder is wanted"
    else:
        bad = tmp_path / "a_folder"
        bad.mkdir()
        needle = "is a folder; a file is wanted"
    err = run_bad(command_line(words, parser, tmp_path, (action, bad)), capsys)
    flag = action.option_strings[0] if action.option_strings else action.dest.upper()
    assert err == f"minillava: error: {flag} {bad}: {needle}"


OUTPUTS = [c for c in PATH_ARGS if c[2].type.kind in ("out_dir", "out_file")]


@pytest.mark.parametrize("words, parser, action", OUTPUTS, ids=ids(OUTPUTS))
def test_an_unwritable_folder(words, parser, action, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root may write anywhere; make the check see what an ordinary user would
        real = os.access
        monkeypatch.setattr(paths.os, "access", lambda p, mode: real(p, mode) and not (
            mode & os.W_OK and os.fspath(p) == os.fspath(locked)))
    bad = locked / "new"
    err = run_bad(command_line(words, parser, tmp_path, (action, bad)), capsys)
    assert err.endswith(f"cannot write in {locked} (permission denied)"), err
    locked.chmod(0o700)


def test_a_path_under_a_file_cannot_be_made(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    err = run_bad(["quickstart", "--out", str(tmp_path / "a_file" / "run")], capsys)
    assert err.endswith(f"{tmp_path / 'a_file'} is a file, so no folder can be made there")


HOLDING = [c for c in PATH_ARGS if c[2].type.holds]


@pytest.mark.parametrize("words, parser, action", HOLDING, ids=ids(HOLDING))
def test_a_folder_that_holds_something_else(words, parser, action, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "holiday.jpg").write_text("")
    err = run_bad(command_line(words, parser, tmp_path, (action, other)), capsys)
    assert "holds" in err and str(other) in err, err
    if action.type.kind == "dir":  # an input: says what it lacks
        assert f"(no {', '.join(action.type.holds)})" in err
    else:  # an output: names what is in the way
        assert "holds other files (holiday.jpg)" in err


INPUTS = [c for c in PATH_ARGS if c[2].type.kind in ("file", "dir")]


@pytest.mark.parametrize("words, parser, action", INPUTS, ids=ids(INPUTS))
def test_an_input_that_does_not_exist(words, parser, action, tmp_path, capsys):
    bad = tmp_path / "missing"
    err = run_bad(command_line(words, parser, tmp_path, (action, bad)), capsys)
    assert err.endswith(f"{bad}: no such {'file' if action.type.kind == 'file' else 'folder'}")
