"""The rule teacher's answers follow from the scene: checked against the generator's own ground truth."""

import random
import re

import pytest

from minillava.data.context import box_lines, normalised_box, symbolic_context
from minillava.data.grid import POSITIONS
from minillava.data.llava_json import read_llava_json, validate_sample, write_llava_json
from minillava.data.records import ImageRecord, ObjectRecord
from minillava.data.shapes import generate_split
from minillava.data.teachers import (answer_is_correct, describe_scene, generate_rule_instructions, needs_binding,
                                     reasoning_question, scene_questions, stated_answer, what_is_at)

WORD_TO_N = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


@pytest.fixture(scope="module")
def scenes():
    return [(record, layout) for record, layout, _ in generate_split(150, "test", seed=11)]


@pytest.mark.parametrize("occupied, worked", [(0.0, False), (1.0, False), (0.0, True)])
def test_every_conversation_answer_matches_ground_truth(scenes, occupied, worked):
    checked = 0
    for record, layout in scenes:
        for qa in scene_questions(record, random.Random(record.image_id), occupied, worked):
            q = qa.question
            if m := re.fullmatch(r"How many (\w+) are there\?", q):
                noun = m.group(1)
                truth = len(layout) if noun == "shapes" else sum(
                    o.shape + ("es" if o.shape == "cross" else "s") == noun for o in layout)
                assert WORD_TO_N[qa.key] == truth, (q, qa.answer)
            elif m := re.fullmatch(r"Where is the (\w+) (\w+)\?", q):
                (obj,) = [o for o in layout if (o.color, o.shape) == m.groups()]
                assert qa.key == obj.position and obj.position in qa.answer
            elif m := re.fullmatch(r"What is at the ([\w ]+)\?", q):
                here = [o for o in layout if o.position == m.group(1)]
                assert qa.key == (here[0].shape if here else "nothing")
            elif m := re.fullmatch(r"What color is the shape at the ([\w ]+)\?", q):
                (obj,) = [o for o in layout if o.position == m.group(1)]
                assert qa.key == obj.color
            elif m := re.fullmatch(r"What color is the (\w+)\?", q):
                (obj,) = [o for o in layout if o.shape == m.group(1)]
                assert qa.key == obj.color
            elif m := re.fullmatch(r"What shape is the (\w+) object\?", q):
                (obj,) = [o for o in layout if o.color == m.group(1)]
                assert qa.key == obj.shape
            elif m := re.fullmatch(r"Is the (\w+) (\w+) large or small\?", q):
                (obj,) = [o for o in layout if (o.color, o.shape) == m.groups()]
                assert qa.key == obj.size
            elif m := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", q):
                present = any((o.color, o.shape) == m.groups() for o in layout)
                assert qa.key == ("yes" if present else "no")
            elif m := re.fullmatch(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", q):
                (first,) = [o for o in layout if (o.color, o.shape) == m.groups()[:2]]
                (second,) = [o for o in layout if (o.color, o.shape) == m.groups()[2:]]
                (r1, c1), (r2, c2) = divmod(first.cell, 3), divmod(second.cell, 3)
                assert ("above" in qa.key) == (r1 < r2) and ("below" in qa.key) == (r1 > r2)
                assert ("left" in qa.key) == (c1 < c2) and ("right" in qa.key) == (c1 > c2)
                worked_steps = (f"The {m.group(1)} {m.group(2)} is at the {first.position} and the {m.group(3)} "
                                f"{m.group(4)} is at the {second.position}, so ")
                assert qa.answer.startswith(worked_steps) == worked  # the two lookups first, when asked for
            else:
                pytest.fail(f"question not covered by this test: {q}")
            assert qa.key in qa.answer.lower() or qa.kind == "count"
            checked += 1
    assert checked > 1000


def test_what_is_at_asks_of_a_random_cell_by_default_and_of_an_occupied_one_as_often_as_asked(scenes):
    def occupied_share(occupied):
        asked = [qa for record, _ in scenes for seed in range(4)
                 for qa in scene_questions(record, random.Random(f"{record.image_id}:{seed}"), occupied)
                 if qa.question.startswith("What is at")]
        return sum(qa.key != "nothing" for qa in asked) / len(asked)
    cells = sum(len(layout) for _, layout in scenes) / (9 * len(scenes))  # the share of cells that hold an object
    assert abs(occupied_share(0.0) - cells) < 0.06 and cells < 0.4  # a random cell: "nothing" is usually right
    assert abs(occupied_share(0.5) - (0.5 + 0.5 * cells)) < 0.06 and occupied_share(1.0) == 1.0
    record = scenes[0][0]  # the default draws nothing more: every question comes out as it did before the option
    assert scene_questions(record, random.Random(3)) == scene_questions(record, random.Random(3), 0.0)


def test_worked_relations_change_only_the_relation_answers(scenes):
    for record, _ in scenes[:60]:
        plain, worked = (scene_questions(record, random.Random(record.image_id), worked=w) for w in (False, True))
        assert [(q.question, q.key, q.kind) for q in plain] == [(q.question, q.key, q.kind) for q in worked]
        for p, w in zip(plain, worked):  # the worked answer ends with the plain one's relation sentence
            assert (p.answer == w.answer) == (p.kind != "relation")
            assert p.kind != "relation" or w.answer.endswith(", so t" + p.answer[1:])


def test_worked_what_is_at_lists_every_object_in_its_cell_then_answers_as_before(scenes):
    for record, layout in scenes[:60]:
        plain, worked = (scene_questions(record, random.Random(record.image_id), worked_what_at=w)
                         for w in (False, True))
        assert [(q.question, q.key, q.kind) for q in plain] == [(q.question, q.key, q.kind) for q in worked]
        for p, w in zip(plain, worked):
            assert (p.answer == w.answer) == (not p.question.startswith("What is at"))
            if p.answer != w.answer:
                steps, answer = w.answer.split(", so ")
                what, cell = re.fullmatch(r"There is (.+) at the ([\w ]+)\.", p.answer).groups()
                assert answer == f"at the {cell} there is {what}."  # the plain answer's object and cell come last
                listed = sorted(layout, key=lambda o: o.cell)  # every object, in reading order, in its own cell
                cells = "|".join(sorted(POSITIONS, key=len, reverse=True))
                assert [m.groups() for m in re.finditer(rf"at the ({cells}) there is an? (\w+) (\w+) (\w+)", steps,
                                                        re.IGNORECASE)] == \
                    [(o.position, o.size, o.color, o.shape) for o in listed]


def test_a_worked_answer_is_judged_by_what_it_concludes():
    record = ImageRecord(1, "s.png", 96, 96, [], [
        ObjectRecord("circle", (0, 0, 30, 30), {"color": "red", "size": "large"}),
        ObjectRecord("square", (64, 64, 30, 30), {"color": "blue", "size": "small"})])
    empty, occupied = what_is_at(record, "center", worked=True), what_is_at(record, "top left", worked=True)
    assert (empty.key, occupied.key) == ("nothing", "circle")
    assert answer_is_correct(empty, empty.answer) and stated_answer("shape", empty.answer) == "nothing"
    assert answer_is_correct(occupied, occupied.answer) and stated_answer("shape", occupied.answer) == "circle"
    # the steps name two shapes, the conclusion one: a wrong conclusion is wrong whatever the steps say
    wrong = occupied.answer.replace("there is a large red circle.", "there is nothing.")
    assert not answer_is_correct(occupied, wrong) and stated_answer("shape", wrong) == "nothing"
    assert not answer_is_correct(occupied, "There is a large red circle and a small blue square at the top left.")


def test_longer_conversations_ask_more_of_the_same_questions(scenes):
    records = [r for r, _ in scenes[:60]]
    short, long = (generate_rule_instructions(records, ("conv",), seed=3, max_turns=n) for n in (4, 16))
    turns = [[len(s["conversations"]) // 2 for s in samples] for samples in (short, long)]
    assert max(turns[0]) == 4 and max(turns[1]) > 4 and all(n >= 2 for n in turns[1])
    for record, sample in zip(records, long):  # every question is one of the scene's, asked once
        questions = [t["value"].removeprefix("<image>\n") for t in sample["conversations"][::2]]
        asked = {q.question for q in scene_questions(record, random.Random(f"3:{record.image_id}:conv"))}
        assert set(questions) <= asked and len(set(questions)) == len(questions)


def test_binding_first_conversations_always_ask_what_needs_colour_and_shape(scenes):
    records = [r for r, _ in scenes]
    plain, first = (generate_rule_instructions(records, ("conv",), seed=5, binding_first=b) for b in (False, True))
    counted = []
    for record, p, f in zip(records, plain, first):
        rng = random.Random(f"5:{record.image_id}:conv")
        qas = scene_questions(record, rng)
        need = [qa.question for qa in qas if needs_binding(qa, record)]
        asked = [t["value"].removeprefix("<image>\n") for t in f["conversations"][::2]]
        assert asked[:len(need)] == need[:len(asked)]  # the binding questions come first, in their shuffled order
        assert len(f["conversations"]) == len(p["conversations"])  # as many turns as without the option
        asked_plain = {t["value"].removeprefix("<image>\n") for t in p["conversations"][::2]}
        counted.append((len(need), sum(question in asked_plain for question in need)))
    assert sum(n for n, _ in counted) > 20 and sum(min(n, 2) for n, _ in counted) > sum(k for _, k in counted)


def test_needs_binding_is_a_shared_shape_with_another_colour():
    objs = [ObjectRecord("circle", (0, 0, 10, 10), {"color": "red", "size": "large"}),
            ObjectRecord("circle", (70, 70, 10, 10), {"color": "blue", "size": "small"}),
            ObjectRecord("square", (0, 70, 10, 10), {"color": "red", "size": "small"})]
    record = ImageRecord(1, "x.png", 96, 96, [], objs)
    kinds = {qa.question: needs_binding(qa, record) for qa in scene_questions(record, random.Random(0))}
    assert kinds["Where is the red circle?"] and kinds["Is the blue circle large or small?"]
    assert not kinds["Where is the red square?"] and not kinds["Is the red square large or small?"]
    assert not kinds["What color is the square?"]


def test_reasoning_answers_match_ground_truth(scenes):
    for record, layout in scenes:
        qa = reasoning_question(record, random.Random(record.image_id))
        q = qa.question
        if m := re.fullmatch(r"If the (\w+) (\w+) were taken away, how many objects would be left\?", q):
            assert WORD_TO_N[qa.key] == len(layout) - 1
        elif m := re.fullmatch(r"If one more (\w+) were added, how many \w+ would there be\?", q):
            assert WORD_TO_N[qa.key] == sum(o.shape == m.group(1) for o in layout) + 1
        elif m := re.fullmatch(r"Are there more (\w+) shapes than (\w+) shapes\?", q):
            k1, k2 = (sum(o.color == c for o in layout) for c in m.groups())
            assert qa.key == ("yes" if k1 > k2 else "no")
        elif m := re.fullmatch(r"If every (\w+) were painted (\w+), how many \w+ shapes would there be\?", q):
            shape, color = m.groups()
            assert WORD_TO_N[qa.key] == sum(o.shape == shape or o.color == color for o in layout)
        else:
            pytest.fail(f"question not covered by this test: {q}")


def test_detail_mentions_every_object_at_its_position(scenes):
    for record, layout in scenes:
        text = describe_scene(record)
        for o in layout:
            assert f"At the {o.position} there is a" in text and f"{o.size} {o.color} {o.shape}." in text


def test_llava_json_round_trip_and_types(scenes, tmp_path):
    samples = generate_rule_instructions([r for r, _ in scenes[:20]], seed=0)
    assert [s["type"] for s in samples[:3]] == ["conv", "detail", "complex"]
    for i, s in enumerate(samples):
        validate_sample(s, f"record {i}")
        assert s["conversations"][0]["value"].startswith("<image>\n")
    path = write_llava_json(tmp_path / "x.json", samples)
    assert read_llava_json(path) == samples
    assert generate_rule_instructions([r for r, _ in scenes[:20]], seed=0) == samples  # deterministic


def test_symbolic_context_has_captions_and_normalised_boxes(scenes):
    record, layout = scenes[0]
    text = symbolic_context(record)
    assert text.startswith(record.captions[0]) and text.count("\n") >= 5
    for line in box_lines(record):
        assert re.fullmatch(r"\w+: \[(0|1)\.\d{3}, (0|1)\.\d{3}, (0|1)\.\d{3}, (0|1)\.\d{3}\]", line)
    assert normalised_box((10, 20, 30, 40), 100, 200) == [0.1, 0.1, 0.4, 0.3]
    assert "[" not in symbolic_context(record, with_boxes=False)


def test_real_coco_records_degrade_to_counts_and_positions():
    """COCO has no colour attributes: no colour questions, but counts, positions and existence from boxes."""
    record = ImageRecord(7, "x.jpg", 640, 480, ["A dog lying on a couch next to a person."],
                         [ObjectRecord("dog", (40, 300, 120, 80)), ObjectRecord("couch", (0, 250, 640, 230)),
                          ObjectRecord("person", (500, 50, 100, 300)), ObjectRecord("person", (420, 60, 60, 200))])
    qas = scene_questions(record, random.Random(0))
    kinds = {qa.kind for qa in qas}
    assert "color" not in kinds and {"count", "position", "exists"} <= kinds
    by_q = {qa.question: qa for qa in qas}
    assert by_q["How many objects are there in the image?"].key == "four"
    assert by_q["Where is the dog?"].key == "bottom left"
    assert "two people" in by_q["Is there a person in the image?"].answer
    detail = describe_scene(record)
    assert detail.startswith("A dog lying on a couch") and "two people" in detail
    samples = generate_rule_instructions([record])
    for i, s in enumerate(samples):
        validate_sample(s, f"record {i}")


def test_a_cell_by_cell_caption_names_every_cell_in_reading_order_and_stage_1_adds_it_only_when_asked(scenes):
    from minillava.data.dataset import caption_samples
    from minillava.data.grid import POSITIONS
    from minillava.data.teachers import cell_by_cell, object_at

    objs = [ObjectRecord("circle", (0, 0, 20, 20), {"color": "red", "size": "large"}),
            ObjectRecord("star", (70, 70, 20, 20), {"color": "blue", "size": "small"})]
    caption = cell_by_cell(ImageRecord(1, "x.png", 96, 96, [], objs))
    assert caption.startswith("Top left: a large red circle. Top center: nothing. ")
    assert caption.endswith("Bottom center: nothing. Bottom right: a small blue star.")
    records = [r for r, _ in scenes]
    for record in records[:20]:
        lines = cell_by_cell(record).split(". ")
        assert len(lines) == 9 and [line.split(":")[0].lower() for line in lines] == list(POSITIONS)
        assert sum("nothing" not in line for line in lines) == len(record.objects)
        assert all((object_at(record, pos) is None) == ("nothing" in line) for pos, line in zip(POSITIONS, lines))
    plain, with_cells = caption_samples(records, seed=3), caption_samples(records, seed=3, cells=True)
    assert with_cells[:len(plain)] == plain  # the captions and their prompts are the same either way
    added = with_cells[len(plain):]
    assert len(added) == len(records) and added[0]["conversations"][1]["value"] == cell_by_cell(records[0])
