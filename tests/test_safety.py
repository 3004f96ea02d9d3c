"""Safe loading: nothing is unpickled, remote code runs only when the caller asks, API keys never leave memory.

The package stores weights and optimiser states only as safetensors and everything else as JSON; these tests read
its source to keep it that way, watch what the loaders pass to transformers, and grep every file and log a chat
teacher run writes for the secret key it was given.
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest

import minillava
from minillava.config import Config, load_config
from minillava.model import backbones

PACKAGE = Path(minillava.__file__).resolve().parent
SECRET = "sk-test-NEVER-WRITE-ME-9f8e7d6c5b4a"


def package_calls():
    """(file, line, dotted name, call node) for every call in the package's source."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(PACKAGE.parent), node.lineno, ast.unparse(node.func), node


def test_no_unpickling_anywhere_in_the_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve")
                       for n in names):
                    offenders.append(f"{path}:{node.lineno} imports {names}")
                if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in names:
                    offenders.append(f"{path}:{node.lineno} imports torch.load under another name")
    for file, line, name, call in package_calls():
        if name.endswith("torch.load"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in call.keywords)
            if not safe:
                offenders.append(f"{file}:{line} {name}(...) without weights_only=True")
        if name.endswith(("numpy.load", "np.load")) and not any(
                k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                for k in call.keywords):
            offenders.append(f"{file}:{line} {name}(...) may unpickle (allow_pickle not False)")
    assert not offenders, offenders


def test_trust_remote_code_is_never_hardcoded_on():
    offenders = [f"{file}:{line} {name}" for file, line, name, call in package_calls()
                 for k in call.keywords
                 if k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is True]
    assert not offenders
    assert Config().trust_remote_code is False
    for preset in ("tiny", "small", "paper"):
        assert load_config(preset).trust_remote_code is False


class Recorder:
    """Stands in for a transformers class: records ``from_pretrained`` keyword arguments, then delegates."""

    def __init__(self, cls, calls: list):
        self.cls, self.calls = cls, calls

    def from_pretrained(self, *args, **kwargs):
        self.calls.append((self.cls.__name__, kwargs.get("trust_remote_code", "<not passed>")))
        return self.cls.from_pretrained(*args, **kwargs)


@pytest.fixture
def loader_calls(monkeypatch):
    calls: list = []
    for name in ("CLIPVisionModel", "AutoTokenizer", "AutoModelForCausalLM"):
        monkeypatch.setattr(backbones, name, Recorder(getattr(backbones, name), calls))
    return calls


def test_loaders_pass_trust_remote_code_false_unless_the_config_says_so(loader_calls, backbone_dirs, tmp_path):
    from minillava.model.build import build_model, load_model, save_model

    cfg = load_config("tiny", dict(vision_name=str(backbone_dirs[0]), lm_name=str(backbone_dirs[1])))
    model, _ = build_model(cfg)
    assert sorted(loader_calls) == [("AutoModelForCausalLM", False), ("AutoTokenizer", False),
                                    ("CLIPVisionModel", False)]

    loader_calls.clear()
    build_model(load_config("tiny", dict(vision_name=str(backbone_dirs[0]), lm_name=str(backbone_dirs[1]),
                                         trust_remote_code=True)))
    assert {flag for _, flag in loader_calls} == {True}

    # a model directory is untrusted input: its config.json cannot switch remote code on by itself
    save_model(model, cfg, tmp_path / "model", include_lm=False)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "trust_remote_code": True}))
    loader_calls.clear()
    _, _, loaded_cfg = load_model(tmp_path / "model")
    assert {flag for _, flag in loader_calls} == {False} and loaded_cfg.trust_remote_code is False
    loader_calls.clear()
    load_model(tmp_path / "model", trust_remote_code=True)  # only the caller can
    assert {flag for _, flag in loader_calls} == {True}


def test_checkpoints_are_safetensors_and_json_only(tiny_cfg, tmp_path):
    from minillava.train import run_stage

    run_stage(tiny_cfg(stage2_steps=2, save_every=1, eval_every=0), 2, tmp_path / "run", progress=False)
    written = {p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert {Path(p).suffix for p in written} <= {".safetensors", ".json", ".jsonl"}, written
    assert "checkpoints/step_0000002/state.json" in written and "model.safetensors" in written


def no_secret_anywhere(root: Path, *texts: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for text in texts:
        assert SECRET not in text


def test_api_key_is_never_logged_or_written(tmp_path, monkeypatch, capsys, caplog, tiny_cfg):
    from test_chat_teacher import Stub

    from minillava.cli import main
    from minillava.data.chat_teacher import TeacherError
    from minillava.data.shapes import write_shapes_dataset
    from minillava.train import run_stage

    monkeypatch.setenv("MY_TEACHER_KEY", SECRET)
    write_shapes_dataset(tmp_path / "scenes", 10, seed=0)
    stub = Stub()
    try:
        stub.script = [500]  # one retry, so a warning is logged with the failing request
        args = ["data", "instruct", "--coco", str(tmp_path / "scenes"), "--split", "train", "--teacher", "chat",
                "--types", "conv", "--base-url", stub.url, "--model", "stub", "--api-key-env", "MY_TEACHER_KEY"]
        with caplog.at_level(logging.DEBUG):
            assert main([*args, "--out", str(tmp_path / "out" / "instruct.json")]) == 0
            stub.default = 401  # this stub echoes the Authorization header back in its error body
            try:
                refused = str(main([*args, "--out", str(tmp_path / "out" / "refused.json")]))
            except TeacherError as e:  # until the CLI reports TeacherError as a one-line error
                refused = str(e)
    finally:
        stub.close()
    captured = capsys.readouterr()
    assert "401" in captured.err + refused
    assert stub.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # the key was really used
    assert "retry 1/5" in caplog.text
    assert len(json.loads((tmp_path / "out" / "instruct.json").read_text())) == 8

    # a training run with the key in its environment: configs, checkpoints and logs stay clean
    run_stage(tiny_cfg(stage2_steps=1, eval_every=0), 2, tmp_path / "out" / "run", progress=False)
    assert not [f for f in Config.__dataclass_fields__ if any(w in f for w in ("api_key", "secret", "password"))]
    no_secret_anywhere(tmp_path / "out", caplog.text, captured.out, captured.err, refused)
