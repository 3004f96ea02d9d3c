"""Exact-match accuracy's diagnostics: what the model said, per question form, and whether it answers by habit."""

import random

from minillava.data.shapes import generate_split
from minillava.data.teachers import answer_is_correct, scene_questions, stated_answer
from minillava.eval.accuracy import answer_habits, question_form


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
