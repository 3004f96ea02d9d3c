"""Nothing lost: training, the §3 chat teacher and the COCO download, each killed with SIGKILL at deterministic
points (``MINILLAVA_FAULT=<point>:<n>``, see ``minillava/faults.py``) and resumed, end exactly where an
uninterrupted run ends — bit-identical weights, the same loss curve (so the same data order), no sample lost or
duplicated, byte-identical files.

Each interrupted run is a separate process: one is the real ``minillava train`` command, the others are forked
from the test process (same code, no interpreter start-up, so the file stays fast on a small CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")

KILLED = -signal.SIGKILL


def in_process(fn, fault: str | None, log: Path) -> int:
    """Run ``fn()`` in a forked child with ``MINILLAVA_FAULT=fault``; its exit code (-9 when it killed itself)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            out = open(log, "a", buffering=1)
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = out
            # a forked child cannot use the thread pool its parent's earlier tests started (the OpenMP/MKL
            # runtime does not survive fork): every run of this file trains on one thread, so all stay comparable
            torch.set_num_threads(1)
            os.environ.pop("MINILLAVA_FAULT", None)
            if fault:
                os.environ["MINILLAVA_FAULT"] = fault
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# --- training ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    """20 scenes (16 train, 2 val): short runs, and a val split so the eval kill point is reached."""
    from conftest import make_scene_dir
    return make_scene_dir(tmp_path_factory.mktemp("kill_scenes"), 20)


def train_overrides(backbone_dirs, data_dir) -> dict:
    return dict(vision_name=str(backbone_dirs[0]), lm_name=str(backbone_dirs[1]), data_dir=str(data_dir),
                data_source="coco",  # a ready COCO-format directory: the CLI must not regenerate it
                stage2_types="conv", stage2_steps=8, stage2_batch=2, grad_accum=2, save_every=2, keep_checkpoints=2,
                eval_every=3, log_every=1, seed=3)


def curve(out: Path) -> list[dict]:
    """The logged curve without wall-clock fields: step, loss, lr, grad norm, val loss."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]


def test_training_killed_at_every_point_resumes_bit_identical(backbone_dirs, small_scenes, tmp_path):
    from minillava.config import load_config
    from minillava.checkpoint import verify
    from minillava.train import run_stage

    overrides = train_overrides(backbone_dirs, small_scenes)
    cfg = load_config("tiny", overrides)

    def train(out):
        return lambda: run_stage(cfg, 2, out, resume=True, progress=False)

    straight, resumed, log = tmp_path / "straight", tmp_path / "resumed", tmp_path / "children.log"
    assert in_process(train(straight), None, log) == 0, log.read_text()
    ckpts = resumed / "checkpoints"

    # 1. first batch of a fresh run: nothing saved yet, the next run starts from step 0
    assert in_process(train(resumed), "train_batch:1", log) == KILLED
    assert not list(ckpts.glob("step_*"))
    # 2. the real command, mid-step (gradients computed, not applied) in its 4th step: checkpoint 2 survives
    env = {**os.environ, "MINILLAVA_FAULT": "train_step:4", "OMP_NUM_THREADS": "1",  # as the forked runs
           "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "minillava", "train", "--stage", "2", "--out", str(resumed), "--resume",
           *[f"{k}={v}" for k, v in overrides.items()]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == KILLED, proc.stderr[-2000:]
    assert [p.name for p in sorted(ckpts.glob("step_*"))] == ["step_0000002"]
    # 3. halfway through writing checkpoint 4: a temporary directory is left, never mistaken for a checkpoint
    assert in_process(train(resumed), "checkpoint_write:1", log) == KILLED
    assert (ckpts / ".step_0000004.tmp").is_dir() and not (ckpts / "step_0000004").exists()
    # 4. during the held-out evaluation after step 3
    assert in_process(train(resumed), "eval:1", log) == KILLED
    # 5. right after checkpoint 4 is renamed into place, before older ones are pruned
    assert in_process(train(resumed), "checkpoint_renamed:1", log) == KILLED
    assert verify(ckpts / "step_0000004")["step"] == 4
    # 6. right after the log line of step 6 is written (steps 5-6 logged but not checkpointed: they are redone)
    assert in_process(train(resumed), "log_written:2", log) == KILLED
    assert curve(resumed)[-1]["step"] == 6
    # 7. the newest checkpoint is then damaged on disk: resume falls back to checkpoint 2 and is killed again
    weights = ckpts / "step_0000004" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert in_process(train(resumed), "train_batch:3", log) == KILLED
    assert "truncated or corrupt" in log.read_text() and "falling back" in log.read_text()
    # 8. and the last run goes to the end
    assert in_process(train(resumed), None, log) == 0, log.read_text()[-3000:]

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("lm.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert curve(resumed) == curve(straight)  # same losses at every step: same batches in the same order
    assert [r["step"] for r in curve(resumed) if "val_loss" in r] == [3, 6, 8]
    assert [p.name for p in sorted(ckpts.glob("step_*"))] == ["step_0000006", "step_0000008"]
    assert not list(ckpts.glob(".*.tmp"))


def test_resume_refuses_a_different_seed(backbone_dirs, small_scenes, tmp_path):
    from minillava.config import load_config
    from minillava.train import run_stage

    overrides = {**train_overrides(backbone_dirs, small_scenes), "stage2_steps": 2}
    run_stage(load_config("tiny", overrides), 2, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"step_0000002: written with seed=3, this run has seed=4"):
        run_stage(load_config("tiny", {**overrides, "seed": 4}), 2, tmp_path / "run", resume=True, progress=False)


# --- §3 chat teacher -----------------------------------------------------------------------------------------

def ids_in(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_chat_teacher_killed_twice_loses_and_duplicates_nothing(tmp_path):
    from test_chat_teacher import Stub, make_records

    from minillava.data import chat_teacher as ct

    stub = Stub()
    try:
        client = ct.ChatClient(stub.url, "stub-model", max_retries=0)
        records, log = make_records(), tmp_path / "children.log"
        reference = tmp_path / "reference.jsonl"
        ct.generate_chat_instructions(records, reference, client=client, progress=False)
        out = tmp_path / "instruct.jsonl"

        def generate():
            ct.generate_chat_instructions(records, out, client=client, progress=False)

        assert in_process(generate, "teacher_reply:3", log) == KILLED     # answered, not yet written
        assert len(ids_in(out)) == 2
        assert in_process(generate, "teacher_written:4", log) == KILLED   # written and fsynced, then killed
        assert len(ids_in(out)) == 6
        assert in_process(generate, None, log) == 0, log.read_text()
    finally:
        stub.close()
    assert ids_in(out) == ids_in(reference) and len(set(ids_in(out))) == 9
    assert len(stub.requests) == 9 + 9 + 1  # the reference, then every sample once plus the one answer lost unwritten


# --- COCO download and extraction ----------------------------------------------------------------------------

@pytest.fixture
def coco_server(monkeypatch):
    import test_coco
    from minillava.data import coco

    server = ThreadingHTTPServer(("127.0.0.1", 0), test_coco._Handler)
    server.daemon_threads = True
    server.state = test_coco._State()
    server.state.files["/big.bin"] = os.urandom(int(2.5 * coco.CHUNK))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    test_coco.point_coco_at(server, monkeypatch)
    yield server
    server.shutdown()
    server.server_close()


def test_download_killed_mid_file_and_before_rename_resumes(coco_server, tmp_path):
    from minillava.data import coco

    data = coco_server.state.files["/big.bin"]
    dest, log = tmp_path / "big.bin", tmp_path / "children.log"

    def fetch():
        coco.download(f"{coco_server.url}/big.bin", dest, size=len(data), md5=hashlib.md5(data).hexdigest(),
                      progress=False)

    assert in_process(fetch, "download_chunk:2", log) == KILLED
    have = (tmp_path / "big.bin.part").stat().st_size
    assert 0 < have < len(data) and not dest.exists()
    assert in_process(fetch, "download_complete:1", log) == KILLED
    assert (tmp_path / "big.bin.part").stat().st_size == len(data) and not dest.exists()
    assert coco_server.state.requests[-1] == ("/big.bin", f"bytes={have}-")  # resumed, not restarted
    n = len(coco_server.state.requests)
    assert in_process(fetch, None, log) == 0, log.read_text()
    assert dest.read_bytes() == data and len(coco_server.state.requests) == n  # complete on disk: no request


def test_prepare_coco_killed_mid_download_and_mid_extract_gives_the_same_subset(coco_server, tmp_path):
    from minillava.data import coco

    log = tmp_path / "children.log"
    reference = coco.prepare_coco("val2017", 3, tmp_path / "ref", seed=2, base_url=coco_server.url,
                                  cache_dir=tmp_path / "ref_cache", progress=False)

    def prepare():
        coco.prepare_coco("val2017", 3, tmp_path / "out", seed=2, base_url=coco_server.url,
                          cache_dir=tmp_path / "cache", progress=False)

    assert in_process(prepare, "download_chunk:1", log) == KILLED
    assert in_process(prepare, "extract_member:3", log) == KILLED
    assert not (tmp_path / "cache" / ".val2017.zip.extracted").exists()
    assert in_process(prepare, None, log) == 0, log.read_text()
    for name in ("captions_val2017.json", "instances_val2017.json"):
        assert (tmp_path / "out" / "annotations" / name).read_bytes() == \
            (tmp_path / "ref" / "annotations" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == \
        sorted(p.name for p in (tmp_path / "ref" / "images").iterdir())
    assert reference["images"] == 3
