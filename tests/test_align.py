"""align.py: stage 1's W fitted onto the stand-in chat LM's cell words (§4.2's "compatible visual tokenizer")."""

import pytest
import torch

from minillava.config import load_config
from minillava.data.records import load_split
from minillava.model.build import build_model, load_model
from minillava.train import run_stage


def _nearest_right(model, features: dict, records, objects_only: bool = False) -> float:
    """Share of patch tokens (or of those where an object stands) whose nearest cell word (cosine) is their own."""
    from minillava.align import cell_word_targets, nearest_cell_words

    truth = cell_word_targets(model.tokenizer, records)
    right = nearest_cell_words(model, torch.stack([features[r.file_name] for r in records])) == truth
    if objects_only:
        empty = torch.tensor([[w.endswith(":empty>") for w in model.tokenizer.convert_ids_to_tokens(row)]
                              for row in truth.tolist()])
        right = right[~empty]
    return right.float().mean().item()


def test_stage1_cell_word_steps_put_the_patch_tokens_on_their_cell_words(scene_dir, tmp_path, one_thread):
    # the shipped stand-in backbones: their chat LM reads scenes in cell words, the tower gives one token per cell
    common = dict(data_dir=str(scene_dir), stage1_steps=2, stage1_batch=8, eval_every=0, save_every=100)
    plain, s_plain = run_stage(load_config("tiny", {**common, "stage1_cell_word_steps": 0}), 1, tmp_path / "captions_only")
    model, s1 = run_stage(load_config("tiny", {**common, "stage1_cell_word_steps": 150}), 1, tmp_path / "aligned")
    records = load_split(scene_dir, "train")
    before, after = _nearest_right(plain, s_plain["features"], records), _nearest_right(model, s1["features"], records)
    assert after > before + 0.3, (before, after)
    assert s1["cell_words"]["last_loss"] < 0.5 * s1["cell_words"]["first_loss"]
    # W only: the LM and the tower are the shipped ones still; the saved stage-1 model holds the fitted W
    assert all(torch.equal(v, plain.lm.state_dict()[k]) for k, v in model.lm.state_dict().items())
    reloaded, _, _ = load_model(tmp_path / "aligned")
    assert all(torch.equal(v, reloaded.projector.state_dict()[k]) for k, v in model.projector.state_dict().items())
    # ... and captions_only/ the W that the captions left, the same as the run without the fit
    captions_only, _, cfg = load_model(tmp_path / "aligned" / "captions_only")
    assert all(torch.equal(v, captions_only.projector.state_dict()[k]) for k, v in plain.projector.state_dict().items())
    assert cfg.stage1_cell_word_steps == 0


def test_the_classification_term_puts_object_tokens_on_their_own_word(scene_dir, tmp_path, one_thread):
    """Squared error alone gets the many empty cells right and few objects; the cosine classification fixes that."""
    common = dict(data_dir=str(scene_dir), stage1_steps=2, stage1_batch=8, eval_every=0, save_every=100,
                  stage1_cell_word_steps=150)
    records = load_split(scene_dir, "train")
    rates = {}
    for ce in (0.0, 0.05):
        model, s1 = run_stage(load_config("tiny", {**common, "stage1_cell_word_ce": ce}), 1, tmp_path / f"ce{ce}")
        rates[ce] = _nearest_right(model, s1["features"], records, objects_only=True)
    assert rates[0.05] > rates[0.0] + 0.2, rates


def test_an_lm_without_cell_words_is_refused_in_one_line_before_stage_1_trains(tiny_cfg, tmp_path):
    cfg = tiny_cfg(stage1_cell_word_steps=5)
    model, processor = build_model(cfg)
    with pytest.raises(ValueError, match="stage1_cell_word_steps: the LM's tokenizer has no cell words"):
        run_stage(cfg, 1, tmp_path / "s1", model=model, processor=processor)
    assert not (tmp_path / "s1" / "log.jsonl").exists()  # refused up front, not after the captions have trained
