"""§5 judges: the rule judge's scores, the relative score, and the chat judge against a stub endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minillava.data.chat_teacher import ChatClient, TeacherError
from minillava.data.records import DataError, ImageRecord, ObjectRecord
from minillava.data.shapes import generate_split
from minillava.eval import bench
from minillava.eval import judges as J

# a large red circle at the top left, a small blue star in the center, a large green square at the bottom right
RECORD = ImageRecord(7, "scene_7.png", 96, 96, ["A red circle, a blue star and a green square."], [
    ObjectRecord("circle", (4.0, 4.0, 24.0, 24.0), {"color": "red", "size": "large"}),
    ObjectRecord("star", (40.0, 40.0, 16.0, 16.0), {"color": "blue", "size": "small"}),
    ObjectRecord("square", (70.0, 70.0, 22.0, 22.0), {"color": "green", "size": "large"})])
OBJECTS = bench.scene_objects_context(RECORD)
REFERENCE_DETAIL = ("The image shows three shapes on a light background. At the top left there is a large red "
                    "circle. At the center there is a small blue star. At the bottom right there is a large green "
                    "square. The colors are red, blue and green.")


def ctx(kind=None, key=None):
    row = {"question_id": 0, "context": "A red circle.", "objects": OBJECTS}
    return {**row, "kind": kind, "key": key} if kind else row


def conv(text, kind, key, question="Q?"):
    return J.RuleJudge().score_answer("conv", question, text, ctx(kind, key))[0]


def test_scene_positions_are_what_the_tests_assume():
    assert [o["position"] for o in OBJECTS] == ["top left", "center", "bottom right"]


def test_rule_judge_gives_the_reference_at_least_9_on_the_whole_embedded_bench(tmp_path):
    records = [r for r, _, _ in generate_split(40, "test", seed=11)]
    paths = bench.make_embedded_bench(records, tmp_path, n_images=30)
    result = J.evaluate_answers(paths["questions"], paths["references"], J.RuleJudge(), paths["references"],
                                paths["context"])
    scores = [row["score_reference"] for row in result["per_question"]]
    assert len(scores) == 90 and min(scores) >= 9
    assert all(result["relative"][c]["score"] == pytest.approx(100) for c in ("conv", "detail", "complex", "all"))


def test_conv_right_answer_high_wrong_answer_low_with_partial_credit():
    assert conv("The circle is red.", "color", "red") == 10
    assert conv("Red.", "color", "red") == 10
    assert conv("The circle is blue.", "color", "red") == 1
    assert conv("It is red or blue.", "color", "red") == 4          # hedged
    assert conv("I cannot tell.", "color", "red") == 2              # no answer of the asked kind
    assert conv("The circle is red, next to a hexagon.", "color", "red") == 8  # hallucinated object
    assert conv("The blue star is at the center.", "position", "center") == 10
    assert conv("The blue star is at the top center.", "position", "center") == 4  # right column
    assert conv("The blue star is at the bottom right.", "position", "center") == 1
    assert conv("There is a large green square at the bottom center.", "position", "bottom center") == 10
    assert conv("No, there is no purple cross.", "exists", "no") == 10  # a negated mention is no hallucination
    assert conv("Yes, there is a purple cross.", "exists", "no") == 1
    assert conv("The red circle is above.", "relation", "above and to the left of") == 4


def test_detail_precision_drops_when_a_missing_object_is_mentioned():
    judge = J.RuleJudge()
    reference = judge.score_answer("detail", "Describe.", REFERENCE_DETAIL, ctx())[0]
    assert reference == 10
    ghost = REFERENCE_DETAIL + " At the top right there is a small orange cross."
    f1 = J.detail_f1(ghost, OBJECTS)
    assert f1["recall"] == 1 and f1["precision"] == pytest.approx(12 / 16) and f1["unmatched"] == 1
    assert judge.score_answer("detail", "Describe.", ghost, ctx())[0] < reference
    partial = "There is a red circle at the top left."  # right but incomplete: recall drops, precision stays
    f1 = J.detail_f1(partial, OBJECTS)
    assert f1["precision"] == 1 and f1["recall"] == pytest.approx(3 / 12)
    wrong_colour = REFERENCE_DETAIL.replace("large red circle", "large yellow circle")
    assert J.detail_f1(wrong_colour, OBJECTS)["precision"] == pytest.approx(11 / 12)
    assert judge.score_answer("detail", "Describe.", "A nice picture.", ctx())[0] == 1


def test_mentions_pair_positions_and_skip_negations():
    found = J.find_mentions("A big red circle at the top-left and a small blue star in the center. No cross.")
    assert [(m.size, m.color, m.shape, m.position) for m in found] == [
        ("large", "red", "circle", "top left"), ("small", "blue", "star", "center")]
    found = J.find_mentions("At the top left, there is a red circle, and a blue star sits at the center.")
    assert [m.position for m in found] == ["top left", "center"]


def test_complex_scores_the_final_answer_and_the_facts_used():
    judge = J.RuleJudge()
    q = "If the red circle were taken away, how many objects would be left?"
    c = ctx("reasoning", "two")
    right = "The image has three objects: a large red circle, a small blue star and a large green square. " \
            "Taking away the red circle leaves two objects."
    assert judge.score_answer("complex", q, right, c)[0] == 10
    assert judge.score_answer("complex", q, right.replace("leaves two", "leaves one"), c)[0] == 4
    assert judge.score_answer("complex", q, "Two.", c)[0] == 7  # right, but no facts shown
    ghost = right.replace("a small blue star", "a small purple hexagon")
    assert 7 < judge.score_answer("complex", q, ghost, c)[0] < 10
    add = "If one more cross were added, how many crosses would there be?"  # a hypothetical object is no ghost
    assert judge.score_answer("complex", add, "Right now there are no crosses. Adding one makes one cross.",
                              ctx("reasoning", "one"))[0] == 10
    cmp = "Are there more red shapes than purple shapes?"
    assert judge.score_answer("complex", cmp, "Yes. There is one red shape and no purple shape.",
                              ctx("reasoning", "yes"))[0] == 10


def test_rule_judge_needs_ground_truth():
    q = {"question_id": 3, "category": "conv", "text": "Q?"}
    with pytest.raises(DataError, match="needs a context row"):
        J.RuleJudge().score(q, "a", "b", None)
    with pytest.raises(DataError, match="no 'kind'"):
        J.RuleJudge().score(q, "a", "b", ctx())


def test_relative_score_is_mean_candidate_over_mean_reference():
    rel = J.relative_scores({"conv": [(10, 5), (8, 8)], "detail": [(10, 9)], "complex": [(5, 10)]})
    assert rel["conv"]["score"] == pytest.approx(13 / 18 * 100)     # summed, not a mean of per-question ratios
    assert rel["detail"]["score"] == pytest.approx(90)
    assert rel["complex"]["score"] == pytest.approx(200)
    assert rel["all"]["score"] == pytest.approx(32 / 33 * 100) and rel["all"]["n"] == 4  # pooled over questions
    assert rel["conv"]["sd"] is None and rel["conv"]["reference"] == 9 and rel["conv"]["candidate"] == 6.5
    repeated = J.relative_scores({"conv": [[(10, 5), (10, 7)], [(10, 5), (10, 9)]]})
    assert repeated["conv"]["score"] == pytest.approx(statistics.fmean([50, 80]))
    assert repeated["conv"]["sd"] == pytest.approx(statistics.stdev([50, 80])) and repeated["conv"]["repeats"] == 2
    assert J.relative_scores({})["all"]["score"] is None
    assert "± 21.2" in J.format_table(repeated)


def test_parse_verdict_is_strict():
    assert J.parse_verdict("8 6\nAssistant 1 is more precise.") == J.Verdict(8, 6, "Assistant 1 is more precise.")
    assert J.parse_verdict("  10, 7.5 \n") == J.Verdict(10, 7.5, "")
    for bad in ["", "Scores: 8 6", "8", "8 6 5", "11 3", "0 5", "**8 6**", "8/10 6/10", "Assistant 1: 8\n6",
                "I would give 8 and 6."]:
        with pytest.raises(J.MalformedVerdict):
            J.parse_verdict(bad)


# --- the chat judge against a stub OpenAI-compatible server ------------------------------------------------------

class Stub:
    """Pops one scripted action per request ('good', 'malformed', 500), then answers 'good'."""

    def __init__(self):
        self.script, self.requests, self.scores = [], [], iter(())
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                action = stub.script.pop(0) if stub.script else "good"
                status, content = 200, None
                if action == "good":
                    s1, s2 = next(stub.scores, (9, 6))
                    content = f"{s1} {s2}\nAssistant 1 names every object; assistant 2 misses one."
                elif action == "malformed":
                    content = "Assistant 1 deserves an 8 and assistant 2 a 6."
                else:
                    status = action
                data = json.dumps({"choices": [{"message": {"content": content}}]} if content is not None
                                  else {"error": "boom"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


@pytest.fixture
def client(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return ChatClient(stub.url, "judge-model", timeout=2, max_retries=2, backoff=0.01, sleep=lambda s: None)


@pytest.fixture
def small_bench(tmp_path):
    """One image × 3 categories, plus a hand-written answers file of 3 rows from 'some-other-model'."""
    paths = bench.make_embedded_bench([RECORD], tmp_path / "bench", n_images=1)
    questions = bench.read_questions(paths["questions"])
    texts = {"conv": "I am not sure.",                                       # no answer
             "detail": REFERENCE_DETAIL + " At the top right there is a small orange cross.",  # one ghost
             "complex": "Hmm."}
    answers = [{"question_id": q["question_id"], "prompt": q["text"], "text": texts[q["category"]],
                "answer_id": f"ext-{q['question_id']}", "model_id": "some-other-model", "metadata": {}}
               for q in questions]
    path = tmp_path / "theirs.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    return {**paths, "answers": path}


def test_chat_judge_shows_context_reference_first_and_parses_good_verdicts(stub, client, small_bench, tmp_path):
    judge = J.ChatJudge(client, cache_path=tmp_path / "cache.jsonl")
    result = J.evaluate_answers(small_bench["questions"], small_bench["answers"], judge, small_bench["references"],
                                small_bench["context"])
    assert len(stub.requests) == 3 and result["failed"] == []
    assert result["relative"]["all"]["score"] == pytest.approx(6 / 9 * 100)
    assert result["judge"] == {"name": "chat", "model": "judge-model", "repeats": 1}
    body = stub.requests[0]
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert body["model"] == "judge-model"
    for word in ("helpfulness", "relevance", "accuracy", "level of detail", "1 to 10"):
        assert word in system
    reference = bench.read_answers(small_bench["references"])[0]["text"]
    assert RECORD.captions[0] in user and "circle: [" in user                     # the symbolic context
    assert user.index(reference) < user.index("I am not sure.")                  # reference is assistant 1
    assert user.index("[Assistant 1]") < user.index(reference) < user.index("[Assistant 2]")
    assert result["per_question"][0]["explanation"].startswith("Assistant 1 names")


def test_malformed_verdicts_are_rejected_retried_and_counted_never_guessed(stub, client, small_bench, tmp_path):
    stub.script = ["malformed", "good"] + ["malformed"] * 3  # q0: fixed on retry; q1: fails all 3 attempts
    judge = J.ChatJudge(client, cache_path=tmp_path / "cache.jsonl", max_malformed=2)
    result = J.evaluate_answers(small_bench["questions"], small_bench["answers"], judge, small_bench["references"],
                                small_bench["context"])
    assert len(stub.requests) == 6
    assert result["failed"] == [1] and result["stats"]["malformed"] == 4 and result["stats"]["failed"] == 1
    failed_row = result["per_question"][1]
    assert failed_row["failed"] and "no well-formed verdict" in failed_row["reason"] and "scores" not in failed_row
    assert result["relative"]["detail"]["n"] == 0 and result["relative"]["all"]["n"] == 2
    # the failed verdict was not cached: a rerun asks for it again, and only for it
    stub.requests.clear()
    again = J.evaluate_answers(small_bench["questions"], small_bench["answers"],
                               J.ChatJudge(client, cache_path=tmp_path / "cache.jsonl"), small_bench["references"],
                               small_bench["context"])
    assert len(stub.requests) == 1 and again["failed"] == []


def test_server_errors_are_retried_by_the_client_then_give_up(stub, client, small_bench, tmp_path):
    stub.script = [500, 500, "good"]
    judge = J.ChatJudge(client)
    q = bench.read_questions(small_bench["questions"])[0]
    verdict = judge.score(q, "ref", "cand", {"context": "x"})
    assert (verdict.score_reference, verdict.score_candidate) == (9, 6) and len(stub.requests) == 3
    stub.script = [500] * 3
    with pytest.raises(TeacherError, match="gave up after 3 attempts"):
        J.ChatJudge(client).score(q, "ref", "other", {"context": "x"})


def test_cache_makes_a_second_run_free_and_an_interrupted_run_resumes(stub, client, small_bench, tmp_path):
    cache = tmp_path / "cache.jsonl"
    args = (small_bench["questions"], small_bench["answers"])
    first = J.evaluate_answers(*args, J.ChatJudge(client, cache_path=cache), small_bench["references"],
                               small_bench["context"])
    assert len(stub.requests) == 3
    second_judge = J.ChatJudge(client, cache_path=cache)
    second = J.evaluate_answers(*args, second_judge, small_bench["references"], small_bench["context"])
    assert len(stub.requests) == 3 and second_judge.stats["cache_hits"] == 3
    assert second["relative"] == first["relative"]
    # an interrupted run: the last verdict is half written; it is cut off and asked for again
    lines = cache.read_bytes().splitlines(keepends=True)
    cache.write_bytes(b"".join(lines[:2]) + lines[2][:20])
    J.evaluate_answers(*args, J.ChatJudge(client, cache_path=cache), small_bench["references"], small_bench["context"])
    assert len(stub.requests) == 4 and len(cache.read_text().splitlines()) == 3
    # another judge model does not reuse these verdicts
    other = ChatClient(stub.url, "another-judge", timeout=2, max_retries=0, sleep=lambda s: None)
    J.evaluate_answers(*args, J.ChatJudge(other, cache_path=cache), small_bench["references"], small_bench["context"])
    assert len(stub.requests) == 7
    cache.write_text('{"key": "a", "scores": [1, 2]}\nnot json\n{"key": "b", "scores": [1, 2]}\n')
    with pytest.raises(DataError, match="line 2"):
        J.ChatJudge(client, cache_path=cache)


def test_repeats_give_mean_and_sd_and_are_cached_per_repeat(stub, client, small_bench, tmp_path):
    stub.scores = iter([(10, 5), (10, 8)] * 3)  # question by question: repeat 0, then repeat 1
    judge = J.ChatJudge(client, cache_path=tmp_path / "cache.jsonl", repeats=2)
    result = J.evaluate_answers(small_bench["questions"], small_bench["answers"], judge, small_bench["references"],
                                small_bench["context"])
    assert len(stub.requests) == 6
    assert result["per_question"][0]["scores"] == [[10, 5], [10, 8]]
    assert result["per_question"][0]["score_candidate"] == 6.5
    rel = result["relative"]["all"]
    assert rel["score"] == pytest.approx(65) and rel["sd"] == pytest.approx(statistics.stdev([50, 80]))
    assert rel["repeats"] == 2
    J.evaluate_answers(small_bench["questions"], small_bench["answers"],
                       J.ChatJudge(client, cache_path=tmp_path / "cache.jsonl", repeats=2),
                       small_bench["references"], small_bench["context"])
    assert len(stub.requests) == 6  # all 6 verdicts cached, each under its repeat index


def test_a_hand_written_answers_file_is_scored_by_the_rule_judge(small_bench):
    result = J.evaluate_answers(small_bench["questions"], small_bench["answers"], J.RuleJudge(),
                                small_bench["references"], small_bench["context"])
    assert result["model_id"] == "some-other-model" and result["failed"] == []
    rows = {row["category"]: row for row in result["per_question"]}
    assert rows["conv"]["score_reference"] == 10 and rows["conv"]["score_candidate"] == 2
    assert 8 < rows["detail"]["score_candidate"] < 10
    assert rows["complex"]["score_candidate"] == 1
    rel = result["relative"]
    assert rel["conv"]["score"] == pytest.approx(20)
    total = sum(r["score_candidate"] for r in rows.values()) / sum(r["score_reference"] for r in rows.values())
    assert rel["all"]["score"] == pytest.approx(total * 100)
    json.dumps(result)  # the whole result is JSON-serialisable


def test_answers_files_that_do_not_match_the_questions_are_errors(small_bench, tmp_path):
    rows = bench.read_answers(small_bench["answers"])
    bench.write_answers(tmp_path / "short.jsonl", rows[:2])
    with pytest.raises(DataError, match="lack 1 of 3 questions"):
        J.evaluate_answers(small_bench["questions"], tmp_path / "short.jsonl", J.RuleJudge(),
                           small_bench["references"], small_bench["context"])
    bench.write_answers(tmp_path / "extra.jsonl", rows + [{**rows[0], "question_id": 99}])
    with pytest.raises(DataError, match="not in"):
        J.evaluate_answers(small_bench["questions"], tmp_path / "extra.jsonl", J.RuleJudge(),
                           small_bench["references"], small_bench["context"])
