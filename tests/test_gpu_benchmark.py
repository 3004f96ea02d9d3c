"""benchmarks/gpu.py --dry-run: the GPU benchmark of the small path, checked on the CPU with shrunk stand-ins."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_trains_both_shapes_and_writes_plan_beside_measurement(tmp_path):
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    gpu = importlib.import_module("gpu")
    out = tmp_path / "gpu.json"
    report = gpu.main(["--dry-run", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["dry_run"] and report["device"] == "cpu" and report["steps"] == 2
    assert [r["shape"] for r in report["runs"]] == list(gpu.SHAPES)
    for run in report["runs"]:
        assert set(run["stages"]) == {1, 2}
        for stage in run["stages"].values():
            assert stage["samples_per_s"] > 0 and stage["tokens_per_s"] > 0 and math.isfinite(stage["last_loss"])
            assert stage["plan_peak_gib"] > 0 and stage["flops_per_step"] > 0
            assert stage["mfu"] is None and stage["peak_memory_gib"] is None  # CPU: no peak FLOP/s, no CUDA stats
    # ViT-L/14 at 336 px gives 576 image tokens per sample, ViT-B/16 at 224 px 196
    assert report["runs"][1]["stages"][1]["tokens_per_sample"] > 576 > report["runs"][0]["stages"][1]["tokens_per_sample"] > 196
