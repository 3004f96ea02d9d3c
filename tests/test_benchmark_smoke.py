"""benchmarks/throughput.py runs end to end (2 steps, tiny batch) and writes the JSON it promises. No timing asserts."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _benchmark(name: str):
    # importable by name, so a spawned child (run_isolated) can find run_variant; spawn passes sys.path on
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def throughput():
    return _benchmark("throughput")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_cli_tiny_and_gpu_shapes_smoke(throughput, tmp_path):
    out = tmp_path / "bench.json"
    throughput.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--batch", "2", "--gpu-shapes-smoke",
                     "--only", "clip-vit-b16-224+qwen2.5-0.5b", "--no-isolate", "--no-compile", "--out", str(out)])
    report = json.loads(out.read_text())
    for key in ("device", "torch", "transformers", "threads", "batch", "steps", "machine", "peak", "runs"):
        assert key in report
    assert report["device"] == "cpu" and report["batch"] == 2 and report["steps"] == 2
    assert _positive(report["peak"]["flops_per_s"]) and report["peak"]["dtype"] == "float32"
    assert [r["shape"] for r in report["runs"]] == ["tiny", "clip-vit-b16-224+qwen2.5-0.5b"]
    assert report["gpu_shapes"]["smoke"] is True
    for run in report["runs"]:
        assert set(run["results"]) == set(throughput.VARIANTS)
        for r in run["results"].values():
            for key in ("ms_per_step", "samples_per_s", "tokens_per_s", "peak_mem_mb", "model_flops_per_step",
                        "trainable_params", "final_loss"):
                assert _positive(r[key]), (run["shape"], key, r[key])
            assert r["mfu"] is None  # CPU: no stated peak to divide by (a measured one moves with load)
        assert set(run["ratios"]) == {"stage2_ours_cached_over_hf", "stage2_ours_online_over_hf",
                                      "stage1_cached_over_online", "stage2_cached_over_online"}
        assert all(_positive(v) for v in run["ratios"].values())
    tiny = report["runs"][0]["results"]
    assert tiny["stage2_ours_cached"]["seq_len"] == 150 and tiny["stage2_ours_cached"]["image_tokens"] == 9
    # stage 1 trains only the projector; the frozen tower is never counted as trainable
    assert tiny["stage1_ours_cached"]["trainable_params"] < tiny["stage2_ours_cached"]["trainable_params"]
    assert tiny["stage2_hf"]["trainable_params"] == tiny["stage2_ours_cached"]["trainable_params"]
    assert "stage-1 cached / online" in throughput.table(report)
    extras = report["extras"]  # tiny only: real lengths padded vs packed, the disk feature cache
    assert set(extras["results"]) == {"stage2_ours_padded", "stage2_ours_packed", "stage1_disk_cache"}
    assert not extras["errors"] and extras["results"]["stage1_disk_cache"]["cache_hits"] == 2
    assert {"stage2_packed_over_padded", "stage1_disk_cache_over_online",
            "feature_prep_warm_cache_over_online"} <= set(extras["ratios"])
    assert all(_positive(v) for v in extras["ratios"].values())
    assert extras["padding"]["grouped"]["padded_pad_tokens_per_batch"] < \
        extras["padding"]["shuffled"]["padded_pad_tokens_per_batch"]
    assert extras["feature_prep"]["max_abs_diff_vs_online"] < 0.05  # bf16 storage
    assert "stage2_ours_packed" in throughput.extras_table(extras)


def test_isolated_variant_reports_own_rss(throughput):
    r = throughput.run_isolated(dict(shape="tiny", variant="stage1_ours_cached", device="cpu", batch=2, steps=1,
                                     warmup=0, threads=1))
    assert r["peak_mem_kind"] == "ru_maxrss (own process)" and _positive(r["peak_mem_mb"])


def test_batch_layout(throughput):
    from tests.conftest import make_random_model

    model = make_random_model()
    batch = throughput.make_batch(model, 3, image_start=7, device="cpu")
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (3, throughput.TEXT_LEN + model.num_image_tokens)
    assert bool((ids[:, 7:7 + model.num_image_tokens] == model.image_token_id).all())
    assert int((ids == model.image_token_id).sum()) == 3 * model.num_image_tokens
    assert int((labels != -100).sum(1)[0]) == throughput.ANSWER_LEN


def test_stage0_lm_benchmark_times_both_variants_on_the_same_batches(tmp_path):
    out = tmp_path / "stage0_lm.json"
    _benchmark("stage0_lm").main(["--steps", "1", "--warmup", "0", "--batch", "6", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"plain", "shared_prefix"} and report["answer_tokens"] > 0
    assert all(_positive(v["answer_tokens_per_s"]) for v in report["variants"].values())
    assert report["variants"]["plain"]["ratio"] == 1.0


def test_lm_lookup_benchmark_reports_answers_attention_and_row_structure(tmp_path):
    out = tmp_path / "lookup.json"
    _benchmark("lm_lookup").main(["--questions", "6", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["n"] == 6 and sum(report["answers"].values()) == pytest.approx(1.0, abs=1e-3)
    for name, table in report["attention"].items():  # layer × head shares, each in [0, 1]
        assert len(table) == 4 and all(len(row) == 6 and all(0 <= v <= 1.001 for v in row) for row in table), name
    assert 0 < report["rows"]["r2_additive"] <= 1


def test_lm_text_forms_groups_the_lms_text_answers_by_question_form_beside_the_images(tmp_path, capsys):
    quickstart = tmp_path / "metrics.json"  # a quickstart's per-form answers, as report.md writes them
    image_row = {"n": 2, "accuracy": 0.5, "commonest_key": ["nothing", 0.5], "commonest_answer": ["nothing", 1.0],
                 "accuracy_by_key": {"circle": 0.0, "nothing": 1.0}, "habit": True}
    quickstart.write_text(json.dumps({"answer_habits": {"shape: What is at the {position}?": image_row}}))
    out = tmp_path / "forms.json"
    _benchmark("lm_text_forms").main(["--questions", "9", "--quickstart", str(quickstart), "--out", str(out)])
    report = json.loads(out.read_text())
    assert sum(row["n"] for row in report["text"].values()) == 9  # every question in one form
    assert sum(kind["n"] for kind in report["text_per_kind"].values()) == 9
    assert all(form.split(": ")[0] in report["text_per_kind"] for form in report["text"])
    assert report["image"]["shape: What is at the {position}?"] == image_row
    printed = capsys.readouterr().out.splitlines()
    row = next(line for line in printed if line.startswith("| shape: What is at the {position}? |"))
    assert row.endswith("| 2 | 0.500 | nothing (1.00) **habit** |"), row  # the image's columns, habit marked


def test_stage2_answers_runs_each_lever_beside_today_and_the_template_bpe_writes_the_prompt_shorter(tmp_path,
                                                                                                   monkeypatch):
    bench = _benchmark("stage2_answers")
    monkeypatch.setattr(bench, "BPE_SCENES", 200)
    report = bench.main(["--steps", "1", "--warmup", "0", "--batch", "3",
                         "--only", "today,shared_prefix,template_bpe_shared", "--out", str(tmp_path / "s2")])
    results = report["results"]
    assert set(results) == {"today", "shared_prefix", "template_bpe_shared"}
    assert results["today"]["answer_tokens_ratio"] == 1.0
    for r in results.values():
        assert _positive(r["answer_tokens_per_s"]) and _positive(r["turns_per_s"]) and 0 < r["answer_share"] < 1
    # same scenes and answers; the swapped BPE spends fewer tokens on the template, so answers are a larger share
    assert results["template_bpe_shared"]["answer_share"] > results["shared_prefix"]["answer_share"]
    assert (tmp_path / "s2.md").read_text().count("|") > 20
