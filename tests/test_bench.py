"""§5 LLaVA-Bench format: round trips, one-line validation errors, the embedded benchmark, answering."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from minillava.data.prompts import DETAIL_PROMPTS
from minillava.data.records import DataError, load_split
from minillava.data.shapes import generate_split
from minillava.eval import bench


@pytest.fixture(scope="module")
def heldout():
    """40 held-out (test-split) scenes, records only: the benchmark needs no pixels to be built."""
    return [record for record, _, _ in generate_split(40, "test", seed=3)]


QUESTIONS = [{"question_id": 0, "image": "a.png", "text": "What color is the circle?", "category": "conv"},
             {"question_id": 1, "image": "a.png", "text": "Describe the image in detail.", "category": "detail"},
             {"question_id": 2, "image": "a.png", "text": "If ..., how many?", "category": "complex"}]


def test_questions_and_answers_round_trip_in_published_field_order(tmp_path):
    bench.write_questions(tmp_path / "q.jsonl", QUESTIONS)
    assert bench.read_questions(tmp_path / "q.jsonl") == QUESTIONS
    first = json.loads((tmp_path / "q.jsonl").read_text().splitlines()[0])
    assert list(first) == ["question_id", "image", "text", "category"]

    answers = [bench.answer_row(q, f"answer {i}", "my-model") for i, q in enumerate(QUESTIONS)]
    bench.write_answers(tmp_path / "a.jsonl", answers)
    back = bench.read_answers(tmp_path / "a.jsonl")
    assert back == answers
    assert list(back[0]) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    assert back[0]["prompt"] == QUESTIONS[0]["text"] and back[0]["metadata"] == {}
    assert bench.answer_row(QUESTIONS[0], "answer 0", "my-model")["answer_id"] == back[0]["answer_id"]  # stable


def test_answers_written_elsewhere_with_only_the_required_fields_load(tmp_path):
    path = tmp_path / "theirs.jsonl"
    path.write_text('{"question_id": 0, "text": "Red."}\n\n{"question_id": 1, "text": "A circle.", "extra": 1}\n')
    assert [a["text"] for a in bench.read_answers(path)] == ["Red.", "A circle."]


@pytest.mark.parametrize("line, needle", [
    ('{"question_id": 0, "image": "a.png", "text": "Q"', "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"question_id": 0, "image": "a.png", "text": "Q"}', "missing field 'category'"),
    ('{"question_id": 0, "image": "a.png", "text": 5, "category": "conv"}', "field 'text' has the wrong type"),
    ('{"question_id": true, "image": "a.png", "text": "Q", "category": "conv"}', "field 'question_id'"),
    ('{"question_id": 0, "image": "a.png", "text": "Q", "category": "chat"}', "field 'category' is 'chat'"),
    ('{"question_id": 0, "image": "a.png", "text": "Q", "category": "conv"}', "field 'question_id' 0 repeats line 1"),
])
def test_bad_question_rows_are_one_line_errors_naming_file_line_and_field(tmp_path, line, needle):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        bench.read_questions(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "line 2" in message and needle in message


@pytest.mark.parametrize("line, needle", [
    ('{"text": "Red."}', "missing field 'question_id'"),
    ('{"question_id": 3}', "missing field 'text'"),
    ('{"question_id": 3, "text": "Red.", "model_id": 7}', "field 'model_id' has the wrong type"),
    ('{"question_id": 3, "text": "Red.", "metadata": []}', "field 'metadata' has the wrong type"),
])
def test_bad_answer_rows_are_one_line_errors(tmp_path, line, needle):
    path = tmp_path / "answers.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match="line 1") as err:
        bench.read_answers(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_empty_questions_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        bench.read_questions(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no questions"):
        bench.read_questions(tmp_path / "empty.jsonl")


def test_embedded_bench_is_30_heldout_images_times_3_categories(heldout, tmp_path):
    paths = bench.make_embedded_bench(heldout, tmp_path / "b", n_images=30, seed=0)
    questions = bench.read_questions(paths["questions"])
    references = bench.read_answers(paths["references"])
    context = bench.read_context(paths["context"])
    assert len(questions) == 90 and Counter(q["category"] for q in questions) == {"conv": 30, "detail": 30,
                                                                                  "complex": 30}
    per_image = {}
    for q in questions:
        per_image.setdefault(q["image"], []).append(q["category"])
    assert len(per_image) == 30 and all(cats == ["conv", "detail", "complex"] for cats in per_image.values())
    assert all(name.startswith("test_") for name in per_image)  # held-out scenes only
    assert [q["question_id"] for q in questions] == list(range(90))
    assert all(q["text"] in DETAIL_PROMPTS for q in questions if q["category"] == "detail")
    assert {r["model_id"] for r in references} == {"reference"} and len(references) == 90
    assert [r["question_id"] for r in references] == list(range(90))
    for q in questions:
        ctx = context[str(q["question_id"])]
        assert ctx["objects"] and "\n\n" in ctx["context"]  # captions, a blank line, then the boxes
        assert ("kind" in ctx) == (q["category"] != "detail")
        if q["category"] == "complex":
            assert ctx["kind"] == "reasoning"
    assert len({ctx.get("kind") for ctx in context.values()} - {None, "reasoning"}) >= 5  # varied facts
    # deterministic per seed, different for another seed
    again = bench.make_embedded_bench(heldout, tmp_path / "c", n_images=30, seed=0)
    assert again["questions"].read_text() == paths["questions"].read_text()
    other = bench.make_embedded_bench(heldout, tmp_path / "d", n_images=30, seed=1)
    assert other["questions"].read_text() != paths["questions"].read_text()
    with pytest.raises(ValueError, match="at least 30"):
        bench.make_embedded_bench(heldout[:10], tmp_path / "e")


def test_questions_rows_keep_extra_fields_such_as_kind_and_key(tmp_path):
    rows = [{**q, "kind": "color", "key": "red"} for q in QUESTIONS]
    bench.write_questions(tmp_path / "exact.jsonl", rows)  # valid questions rows, kind/key kept
    assert bench.read_questions(tmp_path / "exact.jsonl") == rows


def test_answer_matches_fixes_center_positions_and_zero_counts():
    assert bench.answer_matches("position", "bottom center", "Where is it?", "It is at the bottom center.")
    assert not bench.answer_matches("position", "center", "Where is it?", "It is at the bottom center.")
    assert bench.answer_matches("position", "center", "Where is it?", "Right in the center.")
    q = "If the red square were taken away, how many objects would be left?"
    assert bench.answer_matches("reasoning", "no", q, "There is one object. Taking it away leaves no objects.")
    assert not bench.answer_matches("reasoning", "no", q, "No. It leaves one object.")
    assert bench.answer_matches("reasoning", "yes", "Are there more red shapes than blue shapes?", "Yes, two vs one.")


def test_answer_bench_answers_three_questions_in_order(random_model, scene_dir, tmp_path):
    torch.set_num_threads(1)
    records = load_split(scene_dir, "test")
    paths = bench.make_embedded_bench(records, tmp_path / "b", n_images=1, image_root=scene_dir)
    questions = bench.read_questions(paths["questions"])
    assert len(questions) == 3 and (paths["images"] / questions[0]["image"]).is_file()
    from minillava.model.backbones import image_processor_class
    size = random_model.vision.config.image_size
    processor = image_processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    rows = bench.answer_bench(random_model.eval(), processor, questions, tmp_path / "b" / "images", "random",
                              batch_size=2, max_new_tokens=4)
    assert [r["question_id"] for r in rows] == [0, 1, 2]
    assert all(r["model_id"] == "random" and isinstance(r["text"], str) for r in rows)
    assert [r["prompt"] for r in rows] == [q["text"] for q in questions]
    bench.write_answers(tmp_path / "answers.jsonl", rows)
    assert bench.read_answers(tmp_path / "answers.jsonl") == rows
    # the dataset root works as image_root too
    assert len(bench.answer_bench(random_model, processor, questions[:1], scene_dir, "random", max_new_tokens=2)) == 1
