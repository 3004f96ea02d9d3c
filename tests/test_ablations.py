"""`minillava ablate`: the arms change one thing each, the data mixes keep what they say, and a run resumes."""

import json

from minillava.eval.ablations import ARMS, FULL, mix_samples, run_ablations, summarise
from minillava.quickstart import shipped_recipe_hash


def _samples(n):
    return [{"id": f"{i}_{t}", "type": t} for i in range(n) for t in ("conv", "detail", "complex")]


def test_mix_keeps_whole_types_and_seeded_fractions():
    samples = _samples(2000)
    mixed = mix_samples(samples, {"conv": 1.0, "detail": 0.05, "complex": 0.10})
    kinds = [s["type"] for s in mixed]
    assert kinds.count("conv") == 2000
    assert 60 <= kinds.count("detail") <= 140      # 5% of 2000 = 100
    assert 150 <= kinds.count("complex") <= 250    # 10% of 2000 = 200
    assert mixed == mix_samples(samples, {"conv": 1.0, "detail": 0.05, "complex": 0.10})  # deterministic
    assert mix_samples(samples, {"conv": 1.0}) == [s for s in samples if s["type"] == "conv"]


def test_every_arm_changes_exactly_one_thing_against_full():
    assert ARMS["full"] == ({}, FULL)
    for arm, (overrides, mix) in ARMS.items():
        changed = len(overrides) + (mix != FULL)
        assert changed == (0 if arm == "full" else 1), arm


def test_summary_gives_mean_and_sd_over_seeds():
    runs = [{"arm": "full", "seed": s, "relative_score": {"all": v}, "accuracy": {"all": v / 100},
             "train_seconds": 1.0} for s, v in enumerate([50.0, 60.0, 70.0])]
    row = summarise(runs)["full"]
    assert row["relative_score"]["all"] == {"mean": 60.0, "sd": 10.0}
    assert row["paper"]["value"] == 85.1 and row["seeds"] == [0, 1, 2]


def test_ablate_runs_arms_writes_results_and_resumes(tmp_path):
    budget = ["data_images=150", "stage1_steps=2", "stage1_batch=4", "stage2_steps=2", "stage2_batch=4",
              "eval_every=0", "save_every=1000"]
    arms = ["full", "no instruction tuning"]
    result = run_ablations(tmp_path / "runs", tmp_path / "results", seeds=(0,), arms=arms, budget=budget,
                           log=lambda m: None)
    assert set(result["arms"]) == set(arms)
    for name in ("ablations.json", "ablations.md", "ablations.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    assert "no instruction tuning" in (tmp_path / "results" / "ablations.md").read_text()
    stamp = tmp_path / "runs" / "full" / "seed0" / "metrics.json"
    before = stamp.stat().st_mtime_ns
    again = run_ablations(tmp_path / "runs", tmp_path / "results", seeds=(0,), arms=arms, budget=budget,
                          log=lambda m: None)
    assert stamp.stat().st_mtime_ns == before            # a finished (arm, seed) is not trained again
    assert json.loads(stamp.read_text())["budget"] == budget
    assert again["runs"] == result["runs"] and again["backbones"] == shipped_recipe_hash()
    # a run made from other stage-0 weights is trained again, not mixed into the table
    stamp.write_text(json.dumps(json.loads(stamp.read_text()) | {"backbones": "an-older-recipe"}))
    run_ablations(tmp_path / "runs", tmp_path / "results", seeds=(0,), arms=["full"], budget=budget,
                  log=lambda m: None)
    assert json.loads(stamp.read_text())["backbones"] == shipped_recipe_hash()
