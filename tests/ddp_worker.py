"""Run one training stage from a JSON config; launched by test_ddp.py under torchrun (2 gloo processes)."""

import json
import sys

import torch

from minillava.config import load_config
from minillava.train import run_stage

if __name__ == "__main__":
    torch.set_num_threads(1)
    values, out = json.loads(sys.argv[1]), sys.argv[2]
    run_stage(load_config("tiny", values), 2, out, progress=False)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
