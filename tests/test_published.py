"""§5 `minillava eval` on the authors' LLaVA-Bench files as published (COCO and In-the-Wild layouts, their field
names), a stub judge on 127.0.0.1, reviews written in the authors' format and summarised with their arithmetic."""

from __future__ import annotations

import json

import pytest

from minillava.cli import main
from minillava.eval.published import summarize_reviews
from test_judges import stub  # noqa: F401  (the same fixture: a scripted judge on 127.0.0.1)

# three questions about two images, as in qa90_questions.jsonl / questions.jsonl
QUESTIONS = [{"question_id": 0, "image": "000000441147.jpg", "text": "What is the color of the two suitcases?",
              "category": "conv"},
             {"question_id": 1, "image": "000000441147.jpg", "text": "Analyze the image in a comprehensive and "
              "detailed manner.", "category": "detail"},
             {"question_id": 2, "image": "000000353536.jpg", "text": "What potential purpose might the table "
              "setting serve?", "category": "complex"}]
# qa90_gpt4_answer.jsonl rows: question_id, text, category (no answer_id)
COCO_REFERENCES = [{"question_id": q["question_id"], "text": f"GPT-4 reference {q['question_id']}.",
                    "category": q["category"]} for q in QUESTIONS]
# caps_boxes_coco2014_val_80.jsonl rows: one per image, captions and normalised boxes
COCO_CONTEXT = [{"id": "000000441147", "image": "000000441147.jpg",
                 "captions": ["Two suitcases stacked on top of each other.", "A black and a brown suitcase."],
                 "instances": [{"category": "suitcase", "bbox": [0.17, 0.07, 0.88, 0.5]},
                               {"category": "suitcase", "bbox": [0.21, 0.45, 0.89, 0.96]}]},
                {"id": "000000353536", "image": "000000353536.jpg", "captions": ["A table set for dinner."],
                 "instances": [{"category": "dining table", "bbox": [0.0, 0.3, 1.0, 1.0]}]}]
# In-the-Wild: answers_gpt4.jsonl in the full answers format, context.jsonl with one 'caption' per image
WILD_REFERENCES = [{"question_id": q["question_id"], "prompt": q["text"], "text": f"GPT-4 reference {q['question_id']}.",
                    "answer_id": f"gpt4-{q['question_id']}", "model_id": "gpt-4-0314", "metadata": {}}
                   for q in QUESTIONS]
WILD_CONTEXT = [{"id": "001", "image": "000000441147.jpg", "caption": "Two vintage suitcases, black over brown."},
                {"id": "002", "image": "000000353536.jpg", "caption": "A dinner table laid for six."}]
# answers made elsewhere, in the format llava/eval/model_vqa.py writes
THEIRS = [{"question_id": q["question_id"], "prompt": q["text"], "text": f"candidate answer {q['question_id']}",
           "answer_id": f"cand-{q['question_id']}", "model_id": "llava-v1.5-13b", "metadata": {}} for q in QUESTIONS]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def coco(tmp_path):
    d = tmp_path / "coco2014_val_qa_eval"
    d.mkdir()
    (tmp_path / "answers").mkdir()
    return {"bench": write(d / "qa90_questions.jsonl", QUESTIONS),
            "references": write(d / "qa90_gpt4_answer.jsonl", COCO_REFERENCES),
            "context": write(tmp_path / "caps_boxes_coco2014_val_80.jsonl", COCO_CONTEXT),  # kept apart, as published
            "answers": write(tmp_path / "answers" / "llava.jsonl", THEIRS)}


@pytest.fixture
def wild(tmp_path):
    d = tmp_path / "llava-bench-in-the-wild"
    d.mkdir()
    return {"bench": write(d / "questions.jsonl", QUESTIONS), "references": write(d / "answers_gpt4.jsonl", WILD_REFERENCES),
            "context": write(d / "context.jsonl", WILD_CONTEXT), "answers": write(tmp_path / "theirs.jsonl", THEIRS)}


def judge_args(stub, out):
    return ["--judge", "chat", "--base-url", stub.url, "--judge-model", "gpt-4-0314", "--out", str(out)]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_coco_files_are_scored_and_reviews_written_in_the_authors_format(coco, stub, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    stub.scores = iter([(8, 6), (9, 9), (10, 5)])
    out = tmp_path / "eval" / "llava.json"
    assert main(["eval", "--answers", str(coco["answers"]), "--bench", str(coco["bench"]),
                 "--references", str(coco["references"]), "--context", str(coco["context"]),
                 *judge_args(stub, out)]) == 0
    # the judge read the COCO context as eval_gpt_review_visual.py builds it: captions, blank line, boxes
    user = stub.requests[0]["messages"][1]["content"]
    assert ("Two suitcases stacked on top of each other.\nA black and a brown suitcase.\n\n"
            "suitcase: [0.17, 0.07, 0.88, 0.5]\nsuitcase: [0.21, 0.45, 0.89, 0.96]") in user
    assert user.index("GPT-4 reference 0.") < user.index("candidate answer 0")  # reference is assistant 1

    reviews = read_jsonl(out.with_name("llava_reviews.jsonl"))
    assert [list(r) for r in reviews] == [["id", "question_id", "answer1_id", "answer2_id", "category", "content",
                                           "tuple"]] * 3
    assert reviews[0] == {"id": 1, "question_id": 0, "answer1_id": 0, "answer2_id": "cand-0", "category": "conv",
                          "content": "8 6\nAssistant 1 names every object; assistant 2 misses one.",
                          "tuple": [8.0, 6.0]}
    assert [r["category"] for r in reviews] == ["conv", "detail", "complex"]  # COCO: the bare category

    # summarize_gpt_review.py: mean per category rounded to 3 places, candidate / reference × 100 to 1 place
    printed = capsys.readouterr().out
    assert "| all | 74.1 | 90.0 | 66.7 | 3 |" in printed           # 6.667 / 9 → 74.1
    assert "| complex | 50.0 | 100.0 | 50.0 | 1 |" in printed
    assert "| conv | 75.0 | 80.0 | 60.0 | 1 |" in printed
    assert "| detail | 100.0 | 90.0 | 90.0 | 1 |" in printed
    assert json.loads(out.read_text())["summary"]["all"]["relative"] == 74.1


def test_in_the_wild_files_found_beside_the_questions_and_reviews_say_llava_bench(wild, stub, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "reviews" / "llava.json"
    assert main(["eval", "--answers", str(wild["answers"]), "--bench", str(wild["bench"]),
                 *judge_args(stub, out)]) == 0  # answers_gpt4.jsonl and context.jsonl are found beside it
    assert "A dinner table laid for six." in stub.requests[2]["messages"][1]["content"]
    reviews = read_jsonl(out.with_name("llava_reviews.jsonl"))
    assert [r["category"] for r in reviews] == ["llava_bench_conv", "llava_bench_detail", "llava_bench_complex"]
    assert reviews[1]["answer1_id"] == "gpt4-1" and reviews[1]["answer2_id"] == "cand-1"
    assert "| llava_bench_conv | 66.7 | 90.0 | 60.0 | 1 |" in capsys.readouterr().out  # the stub's default 9 6


def test_summary_is_the_authors_arithmetic_over_rows_not_a_mean_of_ratios():
    rows = [{"category": "conv", "tuple": [10, 5]}, {"category": "conv", "tuple": [2, 2]}]
    # mean of ratios would be (50 + 100) / 2 = 75; the authors divide the means: 3.5 / 6 → 58.3
    assert summarize_reviews(rows)["conv"] == {"relative": 58.3, "reference": 60.0, "candidate": 35.0, "n": 2}
    assert summarize_reviews(rows)["all"]["relative"] == 58.3


BAD_ROWS = [
    ("bench", {"question_id": 3, "image": "x.jpg", "text": "Q?"}, "line 4: missing field 'category'"),
    ("references", {"question_id": 3, "category": "conv"}, "line 4: missing field 'text'"),
    ("answers", {"question_id": 3, "text": 7}, "line 4: field 'text' has the wrong type"),
    ("context", {"id": "x", "image": "x.jpg", "captions": ["A cat."], "instances": [{"category": "cat", "bbox": [1]}]},
     "line 3: field 'instances' item 0"),
    ("context", {"id": "x", "image": "x.jpg", "instances": []}, "line 3: missing field 'captions'"),
]


@pytest.mark.parametrize("kind, row, needle", BAD_ROWS, ids=["question", "reference", "answer", "coco-box",
                                                             "coco-captions"])
def test_a_malformed_row_of_each_coco_file_is_one_line_naming_file_line_and_field(coco, stub, tmp_path, capsys,
                                                                                   kind, row, needle):
    path = coco[kind]
    path.write_text(path.read_text() + json.dumps(row) + "\n")
    assert main(["eval", "--answers", str(coco["answers"]), "--bench", str(coco["bench"]), "--references",
                 str(coco["references"]), "--context", str(coco["context"]), *judge_args(stub, tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"minillava: error: {path}: {needle}"), err
    assert stub.requests == []  # nothing is judged before every file has been read


def test_a_malformed_in_the_wild_context_row_is_one_line(wild, stub, tmp_path, capsys):
    write(wild["context"], [WILD_CONTEXT[0], {"id": "002", "image": "000000353536.jpg", "caption": 5}])
    assert main(["eval", "--answers", str(wild["answers"]), "--bench", str(wild["bench"]),
                 *judge_args(stub, tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"minillava: error: {wild['context']}: line 2: field 'caption' has the wrong type (int)"


def test_a_question_whose_image_has_no_context_row_is_named(wild, stub, tmp_path, capsys):
    write(wild["context"], WILD_CONTEXT[:1])
    assert main(["eval", "--answers", str(wild["answers"]), "--bench", str(wild["bench"]),
                 *judge_args(stub, tmp_path / "r.json")]) == 2
    assert "no context row for image '000000353536.jpg' (question_id 2)" in capsys.readouterr().err
