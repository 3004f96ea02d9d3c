"""What pinning the CPU kernels costs, and what it fixes: one training step under three kernel settings, side by side.

torch's own kernels dispatch on the CPU's vector width (``ATEN_CPU_CAPABILITY``: default / avx2 / avx512), MKL (which
does torch's fp32 matrix products on x86) and oneDNN have their own dispatch (``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``).
Different code paths round differently, so the same seed trains to weights that differ in their last digits on an
AVX2 machine and an AVX-512 one. ``scripts/test.sh`` and ``scripts/quickstart.sh`` pin all three to AVX2 (the
``avx2`` row); a machine with AVX-512 can run those kernels, so every machine of this kind then runs the same ones.

Each setting runs ``benchmarks/throughput.py`` (the tiny preset's stage-1 and stage-2 steps, shipped backbones) in a
fresh process, settings interleaved round by round so that background load falls on all of them alike. Reported:
median ms per step, the ratio to the machine's native kernels, and the loss after the timed steps, printed in full:
equal losses across rounds show a setting is deterministic, equal losses across machines that it is portable.

    python benchmarks/cpu_kernels.py --rounds 3 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINNED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SETTINGS = {
    "native": {},                      # whatever the CPU offers (AVX-512 where present)
    "avx2": PINNED_AVX2,               # what the scripts pin
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
VARIANTS = ("stage2_ours_cached", "stage1_ours_cached")


def run_once(env_extra: dict, steps: int, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_AVX2}
    env.update(env_extra)
    subprocess.run([sys.executable, str(HERE / "throughput.py"), "--device", "cpu", "--steps", str(steps),
                    "--no-extras", "--no-isolate", "--out", str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                env=env, capture_output=True, text=True, check=True).stdout.strip()
    results = json.loads(out.read_text())["runs"][0]["results"]
    return {"capability": capability, **{v: results[v] for v in VARIANTS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant and run")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_kernels.json"))
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, env in SETTINGS.items():
                runs[name].append(run_once(env, args.steps, Path(tmp) / f"{name}_{r}.json"))
                print(f"round {r + 1}/{args.rounds} {name}: done", file=sys.stderr)

    native = {v: statistics.median(x[v]["ms_per_step"] for x in runs["native"]) for v in VARIANTS}
    print(f"{'setting':<9}{'torch kernels':<15}" + "".join(f"{v + ' ms':>24}{'÷ native':>10}" for v in VARIANTS)
          + "   loss after the timed steps (stage 2), every round")
    summary = {}
    for name, rows in runs.items():
        med = {v: statistics.median(x[v]["ms_per_step"] for x in rows) for v in VARIANTS}
        losses = [repr(x["stage2_ours_cached"]["final_loss"]) for x in rows]
        summary[name] = {"env": SETTINGS[name], "capability": rows[0]["capability"], "median_ms": med,
                         "ratio_to_native": {v: med[v] / native[v] for v in VARIANTS}, "stage2_final_loss": losses}
        print(f"{name:<9}{rows[0]['capability']:<15}"
              + "".join(f"{med[v]:>24.1f}{med[v] / native[v]:>10.3f}" for v in VARIANTS) + "   " + ", ".join(losses))
    cpu = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         capture_output=True, text=True).stdout.strip()
    Path(args.out).write_text(json.dumps({"native_capability": cpu, "rounds": args.rounds, "steps": args.steps,
                                          "settings": summary, "runs": runs}, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
