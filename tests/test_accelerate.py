"""The same trainer under `accelerate launch`: 2 CPU processes (gloo) match 1 process at the same global batch.

``accelerate launch --multi_gpu`` starts the processes through torch's elastic launcher and sets the same
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) as torchrun, which is all ``train.init_distributed``
reads; without a GPU the trainer picks gloo on the CPU. (``accelerate launch --cpu`` with several processes is
accelerate's MPI path: it needs mpirun and sets MPI's variables instead, which the trainer does not read.)
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")
# the same worker, also writing the world size each rank saw
PROBE = ("import json, os, runpy, sys\n"
         "from pathlib import Path\n"
         "out = Path(sys.argv[2])\n"
         "out.mkdir(parents=True, exist_ok=True)\n"
         "seen = {k: os.environ.get(k) for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}\n"
         "(out / f\"rank{seen['RANK']}.json\").write_text(json.dumps(seen))\n"
         f"sys.argv = [{str(WORKER)!r}] + sys.argv[1:]\n"
         f"runpy.run_path({str(WORKER)!r}, run_name='__main__')\n")


def test_accelerate_launch_two_cpu_processes_match_one(tiny_cfg, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate is not installed (pip install accelerate)")
    values = tiny_cfg(stage2_steps=3, stage2_batch=8, save_every=100, log_every=1, eval_every=0).to_dict()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_CONFIG_FILE": str(tmp_path / "no_config.yaml"),  # never the user's config
           "HF_HOME": str(tmp_path / "hf_home")}
    one = subprocess.run([sys.executable, str(WORKER), json.dumps(values), str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    probe = tmp_path / "accelerate_worker.py"
    probe.write_text(PROBE)
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                          "--main_process_port", str(29600 + os.getpid() % 1000), str(probe), json.dumps(values),
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-5
    log_one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [round(x["loss"], 4) for x in log_one] == [round(x["loss"], 4) for x in log_two]
    # two processes really ran, each told its rank in a world of two
    seen = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"]) for e in seen] == [("0", "2", "0"), ("1", "2", "1")]
