"""What pinning the CPU kernels costs, and what it changes: one stage-2 training step under three kernel settings.

torch's own kernels dispatch on the CPU's vector width (``ATEN_CPU_CAPABILITY``: default / avx2 / avx512), MKL (which
does torch's fp32 matrix products on x86) and oneDNN have their own dispatch (``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``).
Different code paths round differently, so the same seed trains to weights that differ in their last digits.

Each setting runs the same seeded workload in a fresh process — the tiny preset's model from the shipped backbones,
forward + backward + AdamW on a fixed batch of the stage-2 shape (32 × 150 tokens, 9 image tokens, W and the LM
training) — settings interleaved round by round so that background load falls on all of them alike. Reported:
median ms per step, its ratio to the machine's own kernels, and after the timed steps the loss (printed in full) and
a hash of every weight: equal hashes across rounds show a setting is deterministic; different hashes across settings
show that the kernels, not the code, move the last digits.

    python benchmarks/cpu_kernels.py --rounds 3 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
SETTINGS = {
    "native": {},                      # whatever the CPU offers (AVX-512 where present)
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},  # the scripts' pin
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}

WORKLOAD = r'''
import hashlib, json, sys, time
import torch, transformers
from minillava.config import load_config
from minillava.model.build import build_model

steps = int(sys.argv[1])
torch.manual_seed(0)
model, _ = build_model(load_config("tiny", {}))
B, T, N = 32, 150, model.num_image_tokens
g = torch.Generator().manual_seed(1)
ids = torch.randint(5, 600, (B, T), generator=g)
ids[:, 5:5 + N] = model.image_token_id
labels = ids.clone()
labels[:, :120] = -100                                   # ~20% of the tokens carry loss, as in stage 2
feats = torch.randn(B, N, model.vision.config.hidden_size, generator=g)   # Z_v from the feature cache
model.vision.requires_grad_(False)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
times = []
for step in range(3 + steps):
    t = time.perf_counter()
    loss, n = model(input_ids=ids, labels=labels, image_features=feats)
    (loss / n).backward()
    opt.step()
    opt.zero_grad()
    if step >= 3:
        times.append(time.perf_counter() - t)
digest = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "transformers": transformers.__version__,
                  "ms": [1000 * x for x in times], "loss": repr((loss / n).item()), "weights": digest}))
'''


def run_once(env_extra: dict, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PINS}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(steps)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (after 3 warm-up steps)")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_kernels.json"))
    args = ap.parse_args()
    names = args.settings.split(",")

    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            runs[name].append(run_once(SETTINGS[name], args.steps))
            print(f"round {r + 1}/{args.rounds} {name}: done", file=sys.stderr)

    median = {name: statistics.median(ms for run in rows for ms in run["ms"]) for name, rows in runs.items()}
    base = median.get("native", next(iter(median.values())))
    print(f"{'setting':<9}{'kernels':<10}{'ms/step':>9}{'÷ native':>10}   loss after the timed steps; weight hash (every round)")
    for name, rows in runs.items():
        seen = ", ".join(f"{run['loss']} {run['weights']}" for run in rows)
        print(f"{name:<9}{rows[0]['capability']:<10}{median[name]:>9.1f}{median[name] / base:>10.3f}   {seen}")
    Path(args.out).write_text(json.dumps({"settings": {n: SETTINGS[n] for n in names}, "rounds": args.rounds,
                                          "steps": args.steps, "median_ms": median, "runs": runs}, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
