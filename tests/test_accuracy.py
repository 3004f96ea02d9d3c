"""Diagnostics of what a model learned: what it says per question form (habits), and what W keeps of each attribute."""

import random
from collections import Counter

import pytest
import torch

from minillava.data.shapes import generate_split
from minillava.data.teachers import answer_is_correct, scene_questions, stated_answer
from minillava.eval.accuracy import answer_habits, heldout_questions, question_form, wilson
from minillava.viz.projector import attribute_variance, explained_share


def test_stated_answer_reads_the_key_vocabulary_out_of_a_sentence():
    assert stated_answer("size", "The red cross is large.") == "large"
    assert stated_answer("position", "It is at the bottom center.") == "bottom center"  # not also "center"
    assert stated_answer("relation", "The star is below and to the right of the cross.") == "below and to the right of"
    assert stated_answer("shape", "There is nothing at the top left.") == "nothing"
    assert stated_answer("color", "It is red or blue.") == "blue | red"  # two candidates: both, so it is visible
    assert stated_answer("exists", "I cannot tell.") == ""
    assert stated_answer("reasoning", "Two.") == ""


def test_stated_answer_agrees_with_the_scorer_on_the_teachers_own_answers():
    for record, _, _ in generate_split(40, "train", seed=3):
        for qa in scene_questions(record, random.Random(record.image_id)):
            if qa.kind in ("reasoning", "relation"):
                continue
            assert answer_is_correct(qa, qa.answer)
            assert stated_answer(qa.kind, qa.answer) == qa.key, qa


def test_question_form_puts_slots_where_the_scene_words_were():
    assert question_form("What is at the bottom center?") == "What is at the {position}?"
    assert question_form("Is there an orange cross in the image?") == "Is there a {color} {shape} in the image?"
    assert question_form("How many hexagons are there?") == "How many {shape} are there?"
    assert question_form("How many shapes are there?") == "How many shapes are there?"


def _rows(keys, answer):
    return [{"kind": "size", "question": f"Is the red {shape} large or small?", "key": key, "stated": answer(key),
             "correct": answer(key) == key} for key, shape in zip(keys, ["circle", "star"] * len(keys))]


def test_a_constant_answer_to_varied_keys_is_flagged_as_a_habit_and_a_looking_model_is_not():
    keys = ["large", "small"] * 30
    habit = answer_habits(_rows(keys, lambda key: "large"))
    (form, constant), = habit.items()
    assert form == "size: Is the {color} {shape} large or small?"
    assert constant["habit"] and constant["accuracy"] == 0.5
    assert constant["commonest_answer"] == ["large", 1.0] and constant["accuracy_by_key"] == {"large": 1.0, "small": 0.0}
    looking = answer_habits(_rows(keys, lambda key: key))[form]
    assert not looking["habit"] and looking["accuracy"] == 1.0
    # one key for (nearly) every question: answering it always is right, not a habit to flag
    assert not answer_habits(_rows(["large"] * 60, lambda key: "large"))[form]["habit"]


def test_explained_share_is_one_for_the_only_thing_that_varies_and_near_zero_for_noise():
    torch.manual_seed(0)
    labels = ["large", "small"] * 200
    signal = torch.tensor([[1.0, -2.0] if lab == "large" else [-1.0, 2.0] for lab in labels])  # (400, 2)
    assert explained_share(signal, labels) == pytest.approx(1.0)
    noise = torch.randn(400, 16)
    assert explained_share(noise, labels) < 0.02
    mixed = torch.cat([signal, noise], 1)  # the label explains the signal's 5 of about 21 units of variance
    assert 0.15 < explained_share(mixed, labels) < 0.35


def test_attribute_variance_reports_each_attribute_before_and_after_the_projector(random_model):
    features = torch.randn(4, random_model.num_image_tokens, random_model.vision.config.hidden_size)
    objects = [(i, t, {"color": "red" if t % 2 else "blue", "shape": "star", "size": "large" if i < 2 else "small",
                       "cell": t}) for i in range(4) for t in (0, 3, 5)]
    shares = attribute_variance(random_model, features, objects)
    assert set(shares) == {"Z_v", "H_v"} and all(set(s) == {"color", "shape", "size", "cell"} for s in shares.values())
    assert shares["Z_v"]["shape"] == 0.0  # one shape only: it explains nothing
    assert all(0.0 <= v <= 1.0 for s in shares.values() for v in s.values())


def test_heldout_questions_are_fixed_per_seed_and_spread_over_every_scene_and_many_kinds():
    records = [record for record, _, _ in generate_split(40, "test", seed=3)]
    rows = heldout_questions(records, per_image=3)
    assert rows == heldout_questions(records, per_image=3) != heldout_questions(records, per_image=3, seed=7)
    assert len({r.file_name for r, _ in rows}) == 40 and all(n <= 3 for n in Counter(r.file_name for r, _ in rows).values())
    assert {"count", "color", "position"} <= {qa.kind for _, qa in rows}


def test_wilson_interval_holds_the_proportion_and_stays_inside_zero_and_one():
    assert wilson(200, 200)[1] == 1.0 and wilson(0, 200)[0] == 0.0 and wilson(0, 0) == (0.0, 0.0)
    low, high = wilson(30, 100)
    assert low < 0.3 < high and high - low < 0.2
