"""Stage 0: the recipe that makes the shipped tiny backbones runs, and the shipped files match their recipe."""

import dataclasses
import functools
import json
import random
import re
from collections import Counter

import pytest
import torch

from minillava.model.backbones import TINY_DIR, load_lm, load_vision
from minillava.stage0 import (Stage0Config, add_cell_words, add_lm_phase, cell_words, colour_lookup_accuracy,
                              grid_position_code, in_cell_words, lm_phases, probe_features, recipe_scenes, run_stage0,
                              scene_in_cell_words, shipped_file_hashes, text_qa_accuracy, twin)
from minillava.data.shapes import POSITIONS, generate_split


def test_recipe_runs_a_few_steps_and_saves_loadable_backbones(tmp_path):
    cfg = Stage0Config(scenes=200, clip_steps=3, clip_batch=16, lm_steps=3, lm_batch=4, lm_focus_steps=0,
                       lm_cells_steps=0, lm_drill_steps=0, lm_review_steps=0, lm_binding_steps=0,
                       lm_relations_steps=0)
    recipe = run_stage0(tmp_path, cfg, log=lambda s: None)
    assert recipe["config_hash"] == cfg.hash() and set(recipe["probes"]) >= {"color", "shape", "size", "occupied"}
    vision, processor = load_vision(str(tmp_path / "vision"))
    lm, tokenizer = load_lm(str(tmp_path / "lm"))
    assert vision.config.image_size == 96 and tokenizer.convert_tokens_to_ids("<image>") != tokenizer.unk_token_id
    text = "The red circle is at the top left."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: exact
    assert recipe["files"] == shipped_file_hashes(tmp_path)
    # the fixed position code (recipe version 10) is saved as the tower's position embedding, untouched by training
    code = grid_position_code(3, vision.config.hidden_size, cfg.clip_fixed_position)
    assert torch.equal(vision.get_parameter("embeddings.position_embedding.weight").float(), code.bfloat16().float())


def test_the_fixed_position_code_gives_each_cell_its_own_vector_and_the_cls_token_none():
    code = grid_position_code(3, 128, 2.0)  # (1 + 9, 128)
    assert code.shape == (10, 128) and not code[0].any()
    assert torch.allclose(code[1:].norm(dim=-1), torch.full((9,), 2.0 * 8))  # 64 sine–cosine pairs of norm 1, × 2
    distances = torch.cdist(code[1:], code[1:])
    assert distances[~torch.eye(9, dtype=torch.bool)].min() > 1.0
    # row and column are coded apart: same row, same first half of the channels
    assert torch.equal(code[1, :64], code[3, :64]) and not torch.equal(code[1, 64:], code[3, 64:])


def test_later_lm_phases_run_and_adding_them_one_by_one_equals_a_run_from_scratch(tmp_path, monkeypatch):
    import minillava.stage0.lm as lm_module
    import minillava.stage0.recipe as recipe_module

    # the text-QA checks only report (what they measure is tested below); 60 questions keep this test short
    def fewer_questions(lm, tokenizer, scenes, max_questions=600, in_words=None):
        return text_qa_accuracy(lm, tokenizer, scenes, 60, in_words)
    for module in (recipe_module, lm_module):
        monkeypatch.setattr(module, "text_qa_accuracy", fewer_questions)
    cfg = Stage0Config(scenes=200, clip_steps=2, clip_batch=8, lm_steps=2, lm_batch=4, lm_focus_steps=2,
                       lm_focus_batch=4, lm_cells_steps=2, lm_cells_batch=4, lm_drill_steps=0, lm_review_steps=2,
                       lm_review_batch=4, lm_binding_steps=2, lm_binding_batch=4, lm_relations_steps=2,
                       lm_relations_batch=4)
    no_relations = dataclasses.replace(cfg, lm_relations_steps=0)  # worked relations run last
    no_review = dataclasses.replace(no_relations, lm_review_steps=0)  # the review before them (after binding)
    no_binding = dataclasses.replace(no_review, lm_binding_steps=0)
    no_cells = dataclasses.replace(no_binding, lm_cells_steps=0)
    phase1 = dataclasses.replace(no_cells, lm_focus_steps=0)
    assert len({cfg.hash(), no_relations.hash(), no_review.hash(), no_binding.hash(), no_cells.hash(),
                phase1.hash()}) == 6
    assert lm_phases(cfg) == ["focus", "cells", "binding", "review", "relations"]
    assert lm_phases(dataclasses.replace(cfg, lm_review_after_binding=False)) == \
        ["focus", "cells", "review", "binding", "relations"]
    recipe = run_stage0(tmp_path / "scratch", cfg, log=lambda s: None)
    assert set(recipe["text_qa_phase1"]) == set(recipe["text_qa"]) == set(recipe["text_qa_cells"])
    assert min(recipe["seconds"][f"lm_{phase}"] for phase in ("focus", "cells", "review", "binding", "relations")) > 0
    # the shortcut the shipped LM took: phase 1 saved (bf16), then each later phase alone — same weight files
    run_stage0(tmp_path / "steps", phase1, log=lambda s: None)
    with pytest.raises(ValueError, match="without its relations phase"):
        add_lm_phase(tmp_path / "steps", cfg, log=lambda s: None)  # the focus, cells, binding, review come first
    assert add_lm_phase(tmp_path / "steps", no_cells, log=lambda s: None)["config_hash"] == no_cells.hash()
    lm, tokenizer = load_lm(str(tmp_path / "steps" / "lm"))  # where each new cell word starts
    add_cell_words(lm, tokenizer, where=True)
    table = lm.get_input_embeddings().weight.detach()

    def mean(text):
        return table[tokenizer(" " + text, add_special_tokens=False)["input_ids"]].mean(0)
    for word, what, where in [("<top-left:large-red-circle>", "large red circle", "top left"),
                              ("<center:empty>", "nothing", "center")]:
        assert torch.allclose(table[tokenizer.convert_tokens_to_ids(word)], mean(what) + mean(where))
    assert add_lm_phase(tmp_path / "steps", no_binding, log=lambda s: None)["config_hash"] == no_binding.hash()
    assert add_lm_phase(tmp_path / "steps", no_review, log=lambda s: None)["config_hash"] == no_review.hash()
    assert add_lm_phase(tmp_path / "steps", no_relations, log=lambda s: None)["config_hash"] == no_relations.hash()
    continued = add_lm_phase(tmp_path / "steps", cfg, log=lambda s: None)
    assert continued["config_hash"] == cfg.hash() and continued["files"] == recipe["files"]
    assert set(continued["machines"]) == {"lm_focus", "lm_cells", "lm_binding", "lm_review", "lm_relations"}
    lm, tokenizer = load_lm(str(tmp_path / "steps" / "lm"))
    assert lm.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.convert_tokens_to_ids(cell_words(cfg.lm_cells_where)[-1]) != tokenizer.unk_token_id


def test_the_lookup_drills_come_first_ask_one_question_on_busy_scenes_and_stay_in_the_cell_word_mix(tmp_path,
                                                                                                  monkeypatch):
    import minillava.stage0.drill as drill_module
    import minillava.stage0.recipe as recipe_module
    from minillava.data.teachers import scene_questions
    from minillava.stage0 import drill_sample, drill_scenes
    from minillava.stage0.drill import NO_PROMPT
    from minillava.stage0.recipe import train_tower

    # the held-out checks only report here (what they measure is tested elsewhere): few questions keep this short
    def fewer_questions(lm, tokenizer, scenes, max_questions=600, in_words=None):
        return text_qa_accuracy(lm, tokenizer, scenes, 20, in_words)

    def fewer_lookups(lm, tokenizer, held_out, where=True, max_questions=300):
        return colour_lookup_accuracy(lm, tokenizer, held_out, where, 20)
    for module in (recipe_module, drill_module):
        monkeypatch.setattr(module, "text_qa_accuracy", fewer_questions)
        monkeypatch.setattr(module, "colour_lookup_accuracy", fewer_lookups)

    cfg = Stage0Config(scenes=200, clip_steps=2, clip_batch=8, lm_steps=0, lm_focus_steps=0, lm_cells_steps=2,
                       lm_cells_batch=4, lm_drill_steps=2, lm_drill_position_steps=1, lm_drill_relation_steps=1,
                       lm_drill_batch=4, lm_drill_in_cells=0.5, lm_review_steps=0, lm_binding_steps=0,
                       lm_relations_steps=0)
    busy = drill_scenes(cfg)
    assert len(busy) == cfg.scenes and all(3 <= len(layout) <= 6 for _, layout in busy)
    record, layout = busy[0]
    sample = drill_sample(record, layout, random.Random(0))
    assert sample["template"] is NO_PROMPT and len(sample["conversations"]) == 2
    question, answer = (turn["value"] for turn in sample["conversations"])
    shape = question.split()[-1].rstrip("?")
    asked = next(o for o in layout if o.shape == shape)
    assert question.startswith(scene_in_cell_words(layout, where=True)) and answer == f"The {shape} is {asked.color}."
    for kind in ("position", "size", "relation"):  # the teacher's question of that kind, when the scene has one
        sample = drill_sample(record, layout, random.Random(0), kind)
        assert sample is None or sample["conversations"][1]["value"] in \
            {qa.answer for seed in range(50) for qa in scene_questions(record, random.Random(seed)) if qa.kind == kind}
    recipe = run_stage0(tmp_path, cfg, log=lambda s: None)  # no phase 1: the drills make the LM, phase 3 follows
    assert recipe["seconds"]["lm_drill"] > 0 and "lm" not in recipe["seconds"] and 0 <= recipe["colour_lookup"] <= 1
    assert json.loads((tmp_path / "tower.json").read_text())["probes"] == recipe["probes"]
    # a later run into the same directory with the same tower settings reuses the saved tower (no scenes needed)
    assert train_tower(tmp_path, cfg, [], [], None, log=lambda s: None) == (recipe["probes"], recipe["seconds"]["clip"])
    assert cfg.recipe_version() == 10 and cfg.hash() != dataclasses.replace(cfg, lm_drill_steps=0).hash()
    assert dataclasses.replace(cfg, lm_review_steps=1, lm_review_after_binding=False).recipe_version() == 11
    lm, tokenizer = load_lm(str(tmp_path / "lm"))
    assert lm.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.convert_tokens_to_ids(cell_words(True)[-1]) != tokenizer.unk_token_id


def test_the_binding_phase_asks_only_of_objects_whose_shape_another_object_shares():
    from minillava.stage0.binding import binding_questions, binding_sample
    from minillava.data.teachers import scene_questions
    scenes, _ = recipe_scenes(Stage0Config(scenes=300))
    asked = 0
    for record, layout, _ in scenes:
        rng = random.Random(record.image_id)
        questions = binding_questions(record, rng)
        teacher = {(qa.question, qa.answer) for qa in scene_questions(record, random.Random(record.image_id))}
        assert {(qa.question, qa.answer) for qa in questions} <= teacher  # the teacher's own questions and answers
        for qa in questions:
            color, shape = qa.question.split(" the ")[1].rstrip("?").split()[:2]
            named = [o for o in layout if (o.color, o.shape) == (color, shape)]
            assert qa.kind in ("position", "size", "relation") and len(named) == 1
            assert any(o.shape == shape and o.color != color for o in layout)  # only colour tells it apart
            asked += 1
        # a uniquely named object whose shape another one has is always asked about, whatever the draw
        pairs = [(o.color, o.shape) for o in layout]
        expected = any(pairs.count((o.color, o.shape)) == 1 and any(p.shape == o.shape and p.color != o.color
                                                                   for p in layout) for o in layout)
        assert bool(questions) == expected
        if questions:
            sample = binding_sample(record, layout, random.Random(1))
            assert sample["conversations"][0]["value"].startswith(scene_in_cell_words(layout, True))
            assert 2 <= len(sample["conversations"]) <= 4
    assert asked > 50


def test_the_review_asks_what_is_in_an_occupied_cell_as_often_as_in_an_empty_one_and_the_weak_forms_more():
    from minillava.data.teachers import object_at
    from minillava.stage0.review import REVIEW_FORMS, review_question, review_sample
    rng = random.Random(0)
    scenes = generate_split(300, "train", seed=3)
    asked = [review_question(record, rng, "what_at") for record, _, _ in scenes]
    occupied = [qa.key != "nothing" for qa in asked]
    assert 0.4 < sum(occupied) / len(occupied) < 0.6  # the teacher's one random cell: ~0.28 on 1-4 objects
    for (record, _, _), qa in zip(scenes, asked):
        obj = object_at(record, qa.question[len("What is at the "):-1])
        assert qa.key == (obj.category if obj else "nothing") and (obj is None or obj.color in qa.answer)
    record, layout, _ = next(s for s in scenes if len(s[1]) >= 2)
    assert review_question(record, rng, "relation").kind == "relation"
    sample = review_sample(record, layout, random.Random(1))
    assert "template" not in sample  # the stage-2 template, system prompt and all
    question = sample["conversations"][0]["value"]
    assert question.startswith(scene_in_cell_words(layout, where=True) + "\n") and 2 <= len(sample["conversations"]) <= 4
    questions = [turn["value"] for record, layout, _ in scenes[:200]
                 for turn in review_sample(record, layout, rng)["conversations"][::2]]
    weak = sum("What is at" in q or "relative to" in q for q in questions) / len(questions)
    assert weak > 0.35 and weak > (REVIEW_FORMS["what_at"] + REVIEW_FORMS["relation"]) / sum(REVIEW_FORMS.values()) - 0.1


def test_worked_relations_name_both_cells_before_the_relation_in_the_phase_and_in_its_mix():
    from minillava.data.teachers import conclusion, position, relation
    from minillava.stage0 import relation_sample
    from minillava.stage0.vocab import cell_words_sample
    scenes = generate_split(300, "train", seed=3)
    busy = [(record, layout) for record, layout, _ in scenes if len(layout) >= 2]
    rng = random.Random(0)
    pairs = Counter()
    for _ in range(200):
        sample = relation_sample(busy, rng)
        turns = [turn["value"] for turn in sample["conversations"]]
        assert "template" not in sample and 2 <= len(turns) <= 4
        record, layout = next((r, lay) for r, lay in busy if f"relation_{r.image_id}" == sample["id"])
        assert turns[0].startswith(scene_in_cell_words(layout, where=True) + "\n")
        for question, answer in zip(turns[::2], turns[1::2]):
            first, second = (next(o for o in record.objects if f"{o.color} {o.category}" == named)
                             for named in re.match(r".*Where is the (\w+ \w+) relative to the (\w+ \w+)\?$",
                                                   question, re.S).groups())
            # the lookups first, each object's cell, then the comparison
            assert answer.startswith(f"The {first.color} {first.category} is at the {position(first, record)} and "
                                     f"the {second.color} {second.category} is at the {position(second, record)}, so")
            assert conclusion(answer) == f"the {first.color} {first.category} is {relation(first, second, record)} " \
                                         f"the {second.color} {second.category}."
            pairs[" and " in relation(first, second, record)] += 1
    assert min(pairs.values()) > 0.35 * sum(pairs.values())  # one row or column about as often as diagonal
    # the phase-3 dialogues in its mix answer relation questions the worked way too, never the plain one
    turns = [[turn["value"] for turn in cell_words_sample(record, layout, rng, True, worked=True)["conversations"]]
             for record, layout, _ in scenes]
    answers = [a for t in turns for q, a in zip(t[::2], t[1::2]) if " relative to the " in q]
    assert len(answers) > 20 and all(re.search(r" is at the .* and the .* is at the .*, so ", a) for a in answers)


@pytest.mark.parametrize("where", [False, True])
def test_a_scene_in_cell_words_is_nine_single_tokens_in_row_major_cell_order(where):
    from transformers import LlamaForCausalLM
    lm, tokenizer = load_lm("tiny")
    words_ = cell_words(where)
    if words_[1] not in tokenizer.get_vocab():  # the shipped LM knows one of the two forms
        add_cell_words(lm, tokenizer, where)
    assert isinstance(lm, LlamaForCausalLM) and len(words_) == (9 if where else 1) * (1 + 2 * 6 * 6)
    for _, layout, _ in generate_split(30, "val", seed=5):
        ids = tokenizer(scene_in_cell_words(layout, where), add_special_tokens=False)["input_ids"]
        words = tokenizer.convert_ids_to_tokens(ids)
        assert len(ids) == 9 and all(w in words_ for w in words)
        place = [f"{POSITIONS[c].replace(' ', '-')}:" if where else "" for c in range(9)]
        for obj in layout:
            assert words[obj.cell] == f"<{place[obj.cell]}{obj.size}-{obj.color}-{obj.shape}>"
        assert sum(w == f"<{place[i]}empty>" for i, w in enumerate(words)) == 9 - len(layout)


def test_focus_samples_ask_mostly_hard_kinds_and_near_miss_absent_pairs_are_absent():
    from minillava.stage0 import focus_sample
    rng, kinds, near_misses = random.Random(0), [], 0
    for record, _, _ in generate_split(300, "train", seed=3):
        sample = focus_sample(record, rng)
        assert sample["conversations"][0]["value"].startswith(f"Scene: {record.captions[1]}")
        present = {f"{o.color} {o.category}" for o in record.objects}
        for turn in sample["conversations"][::2]:
            question = turn["value"].split("\n")[-1]
            if question.startswith("Is there"):
                pair = " ".join(question.split()[3:5])
                if pair not in present and any(w in pair.split() for o in record.objects for w in (o.color, o.category)):
                    near_misses += 1
            kinds.append(question)
    hard = sum(q.startswith(("Is there", "Is the", "Where is")) for q in kinds)
    assert hard / len(kinds) > 0.6 and near_misses > 30


def test_shared_prefix_loss_and_gradients_equal_the_plain_batch_with_chat_and_plain_rows_mixed(monkeypatch):
    """``fit_lm(share_prefix=True)``: chat rows run their common system prompt once, stage-1 ``plain`` rows go
    apart; the mean over all answer tokens and every gradient equal transformers' own loss on the padded batch."""
    import random

    from transformers import LlamaForCausalLM

    from minillava.conversation import get_template, tokenize_conversation
    from minillava.data.dataset import pad_right
    from minillava.model.backbones import tiny_lm_config
    import minillava.model.llava as llava
    from minillava.stage0.lm import shared_prefix_loss
    from minillava.stage0.vocab import cell_words_sample
    prefixes = []
    decode_rest = llava.decode_rest
    monkeypatch.setattr(llava, "decode_rest", lambda *a: prefixes.append(a[-1]) or decode_rest(*a))
    _, tokenizer = load_lm("tiny")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_lm_config(len(tokenizer), tokenizer))
    rng, template = random.Random(0), get_template("vicuna_v1")
    scenes = generate_split(40, "train", seed=3)
    samples = [cell_words_sample(*rng.choice(scenes)[:2], rng, True) for _ in range(12)]
    assert 0 < sum("template" in s for s in samples) < len(samples)  # both kinds of row are in the batch
    items = [tokenize_conversation(s, tokenizer, s.pop("template", template), image_tokens=1, max_length=256)
             for s in samples]

    def loss_and_grads(loss_fn):
        lm.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in lm.parameters()]
    plain, plain_grads = loss_and_grads(lambda: lm(**pad_right(items, tokenizer.pad_token_id)).loss)
    shared, shared_grads = loss_and_grads(lambda: shared_prefix_loss(lm, items, tokenizer))
    assert shared == pytest.approx(plain, abs=1e-5)
    system = len(tokenizer(template.system, add_special_tokens=False)["input_ids"])
    assert len(prefixes) == 1 and prefixes[0] > system  # the chat rows' system prompt ran once, with BOS and USER:
    for a, b in zip(plain_grads, shared_grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_hard_negative_twin_differs_in_exactly_one_attribute():
    for _, layout, _ in generate_split(50, "train", seed=1):
        other = twin(layout, random.Random(0))
        assert len(other) == len(layout) and other != layout
        changed = set(layout) ^ set(other)
        assert len(changed) == 2  # one object out, its modified copy in


def test_a_config_that_leaves_a_later_addition_off_hashes_as_the_recipe_version_before_it():
    import hashlib

    def version1_hash(cfg):  # the hash before any of the additions existed: the fields of version 1 only
        additions = ("lm_focus_", "lm_cells_", "lm_share_prefix", "bpe_template_weight", "lm_drill_",
                     "clip_fixed_position", "lm_review_", "lm_binding_", "lm_relations_")  # lm_review_: version 13 too
        fields = {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith(additions)}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    phase1 = Stage0Config(lm_focus_steps=0, lm_cells_steps=0, lm_focus_lr=1.0, lm_cells_where=True, lm_drill_steps=0,
                          lm_cells_color=False, lm_share_prefix=False, bpe_template_weight=0, clip_fixed_position=0.0,
                          lm_review_steps=0, lm_binding_steps=0, lm_relations_steps=0)
    assert phase1.recipe_version() == 1 and phase1.hash() == version1_hash(phase1)
    # version 4: cell words that name their cell; each later addition switched on alone is its own version
    base = Stage0Config(lm_cells_color=False, lm_share_prefix=False, bpe_template_weight=0, lm_drill_steps=0,
                        clip_fixed_position=0.0, lm_review_steps=0, lm_binding_steps=0, lm_relations_steps=0)
    assert base.recipe_version() == 4
    for version, switch in [(5, {"lm_cells_color": True}), (6, {"lm_share_prefix": True}),  # 6: other rounding
                            (7, {"bpe_template_weight": 1}), (8, {"lm_drill_steps": 100}),
                            (10, {"clip_fixed_position": 2.0}),
                            (11, {"lm_review_steps": 100, "lm_review_after_binding": False}),
                            (12, {"lm_binding_steps": 100}), (14, {"lm_relations_steps": 100})]:
        cfg = dataclasses.replace(base, **switch)
        assert cfg.recipe_version() == version and cfg.hash() != base.hash(), switch
    drilled = dataclasses.replace(base, lm_drill_steps=100)
    sized = dataclasses.replace(drilled, lm_drill_size_steps=100)  # an addition to the drills: version 9
    assert sized.recipe_version() == 9 and sized.hash() != drilled.hash()
    assert dataclasses.replace(base, lm_drill_size_steps=100).hash() == base.hash()  # no drills: it does nothing
    reviewed = dataclasses.replace(base, lm_review_steps=100, lm_binding_steps=100, lm_review_after_binding=False)
    last = dataclasses.replace(reviewed, lm_review_after_binding=True)  # the review moved after binding: version 13
    assert last.recipe_version() == 13 and last.hash() != reviewed.hash()
    assert dataclasses.replace(base, lm_review_after_binding=False).hash() == base.hash()  # no review: nothing moves


def test_a_tokenizer_that_saw_the_template_once_per_scene_writes_it_in_fewer_tokens_and_the_rest_alike():
    from minillava.conversation import VICUNA_SYSTEM
    from minillava.model.backbones import train_tiny_tokenizer
    from minillava.stage0 import corpus

    scenes = generate_split(200, "train", seed=5)
    assert len(corpus(scenes, template_weight=1)) == len(corpus(scenes)) + 2 * len(scenes)
    # the recipe's vocabulary size: with fewer merges (400) all go to the teachers' words, template weighted or not
    once, often = (train_tiny_tokenizer(corpus(scenes, k), vocab_size=600) for k in (0, 1))

    def length(tok, text):
        return len(tok(text, add_special_tokens=False)["input_ids"])
    assert length(often, VICUNA_SYSTEM) < length(once, VICUNA_SYSTEM) / 2
    answers = [scene[0].captions[0] for scene in scenes]  # what the teachers write costs about the same
    assert sum(length(often, a) for a in answers) <= 1.1 * sum(length(once, a) for a in answers)


@pytest.mark.skipif(not (TINY_DIR / "recipe.json").is_file(), reason="no shipped tiny backbones in this checkout")
def test_shipped_weights_match_the_recipe():
    recipe = json.loads((TINY_DIR / "recipe.json").read_text())
    assert recipe["config_hash"] == Stage0Config().hash(), \
        "Stage0Config changed since the tiny backbones were made: rerun `minillava train --stage 0 --out " \
        "minillava/assets/tiny` and commit the result"
    assert recipe["files"] == shipped_file_hashes(TINY_DIR), "shipped weight files differ from recipe.json"


@pytest.mark.skipif(not (TINY_DIR / "recipe.json").is_file(), reason="no shipped tiny backbones in this checkout")
def test_shipped_vision_features_encode_colour_shape_size_and_place():
    """Re-measured here: linear probes on the frozen penultimate-layer patch features, held-out layouts.

    ``cell``: which of the 9 grid cells a patch sits in, i.e. whether position survives to the features."""
    vision, _ = load_vision("tiny")
    probes = probe_features(vision, generate_split(600, "train", seed=77), generate_split(200, "val", seed=77), 96)
    for task in ("color", "shape", "size", "occupied", "cell"):
        assert probes[task] > probes[f"{task}_majority"] + 0.2, (task, probes)


@pytest.mark.skipif(not (TINY_DIR / "recipe.json").is_file(), reason="no shipped tiny backbones in this checkout")
def test_shipped_chat_lm_answers_from_a_scene_in_cell_words():
    """Re-measured here: text-only QA about held-out scenes given as nine cell words, against the majority answer.

    Each word names its cell too (``lm_cells_where``), so the shipped LM reads position as well as colour, count,
    shape and existence well above the majority answer, and after binding and the review size and relations too."""
    lm, tokenizer = load_lm("tiny")
    result = text_qa_accuracy(lm, tokenizer, generate_split(80, "val", seed=78), max_questions=240,
                              in_words=functools.partial(in_cell_words, where=Stage0Config().lm_cells_where))
    for kind in ("color", "count", "shape", "exists", "position", "size", "relation"):
        assert result[kind]["accuracy"] > result[kind]["majority"] + 0.15, (kind, result[kind])
