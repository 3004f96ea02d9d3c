"""§3 chat teacher: prompt shape, reply parsing, a robust client, and a resumable generation run.

Everything runs against a scripted OpenAI-compatible stub on 127.0.0.1; no test touches the network.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from minillava.data import chat_teacher as ct
from minillava.data.llava_json import read_llava_json, validate_sample
from minillava.data.records import DataError, ImageRecord, ObjectRecord

SECRET = "sk-test-DO-NOT-LEAK-0123456789"


def make_records() -> list[ImageRecord]:
    return [
        ImageRecord(1, "scene_1.png", 96, 96, ["A large red circle at the top left.", "A red circle."],
                    [ObjectRecord("circle", (4.0, 4.0, 24.0, 24.0), {"color": "red", "size": "large"})]),
        ImageRecord(2, "scene_2.png", 96, 96, ["A small blue square in the center and a green star at the bottom."],
                    [ObjectRecord("square", (40.0, 40.0, 16.0, 16.0), {"color": "blue", "size": "small"}),
                     ObjectRecord("star", (36.0, 70.0, 20.0, 20.0), {"color": "green", "size": "large"})]),
        ImageRecord(3, "000000000139.jpg", 640, 426, ["A dog lying on a couch."],
                    [ObjectRecord("dog", (100.0, 150.0, 200.0, 120.0)),
                     ObjectRecord("couch", (50.0, 100.0, 500.0, 300.0))]),
    ]


def good_reply(messages: list[dict]) -> str:
    """A well-formed reply derived from the query context (the last user message)."""
    context = messages[-1]["content"]
    captions, _, boxes = context.partition("\n\n")
    objects = [line.split(":")[0] for line in boxes.splitlines() if ":" in line] or ["thing"]
    system = messages[0]["content"]
    first = captions.splitlines()[0].rstrip(".")
    if "conversation" in system:
        return (f"User: What is in the image?\nAssistant: {first}.\n"
                f"User: How many objects are there?\nAssistant: There are {len(objects)}: {', '.join(objects)}.")
    if "paragraph" in system:
        return f"The image shows the following scene: {first}. It contains {', '.join(objects)} on a background."
    return f"Question: Why might the {objects[0]} be there?\nAnswer: Because {first.lower()}, it fits the scene."


class Stub:
    """Scripted OpenAI-compatible server: pops one action per request, then behaves as ``default``."""

    def __init__(self):
        self.script: list = []
        self.default = "good"
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                action = stub.script.pop(0) if stub.script else stub.default
                try:
                    stub.respond(self, action, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def respond(self, handler, action, body):
        status, headers, content = 200, {}, None
        if action == "good":
            content = good_reply(body["messages"])
        elif action == "malformed":
            content = "Sure! Here is what the captions say: circle: [0.1, 0.2, 0.3, 0.4]"
        elif action == "slow":
            time.sleep(0.5)
            content = good_reply(body["messages"])
        elif action == 429:
            status, headers = 429, {"Retry-After": "7"}
        elif action == 500:
            status = 500
        elif action == 401:  # echo the credentials back, as some proxies do, to check redaction
            status = 401
            payload = json.dumps({"error": f"invalid key, got header {handler.headers.get('Authorization')}"})
        if content is not None:
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        elif status != 401:
            payload = json.dumps({"error": f"status {status}"})
        data = payload.encode()
        handler.send_response(status)
        for k, v in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(stub, sleeps, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return ct.ChatClient(stub.url, "stub-model", timeout=0.2, max_retries=3, backoff=0.5, sleep=sleeps.append)


def test_messages_are_system_then_seeds_then_query():
    record = make_records()[1]
    for response_type, n_seeds in (("conv", 2), ("detail", 3), ("complex", 3)):
        messages = ct.build_messages(record, response_type)
        assert messages[0]["role"] == "system"
        assert len(messages) == 1 + 2 * n_seeds + 1
        assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * n_seeds
        assert messages[-1] == {"role": "user", "content": ct.symbolic_context(record, with_boxes=True)}
        assert "square: [" in messages[-1]["content"]
    conv_seed_contexts = [m["content"] for m in ct.build_messages(record, "conv")[1:-1:2]]
    assert not any("[" in c for c in conv_seed_contexts), "conversation seeds show captions only"
    for response_type in ("detail", "complex"):
        assert all("[" in m["content"] for m in ct.build_messages(record, response_type)[1:-1:2])


def test_seed_responses_pass_the_parser():
    for response_type, seeds in ct.SEEDS.items():
        for _, response in seeds:
            assert ct.parse_reply(response, response_type)


def test_parse_reply_shapes_and_deterministic_detail_prompt():
    assert ct.parse_reply("User: Q1?\nAssistant: A1.\nmore of A1\nUser: Q2?\nAssistant: A2.", "conv") == [
        ("Q1?", "A1.\nmore of A1"), ("Q2?", "A2.")]
    assert ct.parse_reply("Question: Why?\nAnswer: Because.", "complex") == [("Why?", "Because.")]
    prose = "A red circle sits in the top left corner of an otherwise empty picture."
    prompts = ["P0", "P1", "P2", "P3"]
    first = ct.parse_reply(prose, "detail", image_id=42, detail_prompts=prompts)
    assert first == ct.parse_reply(prose, "detail", image_id=42, detail_prompts=prompts)
    assert first[0][0] in prompts and first[0][1] == prose
    assert {ct.parse_reply(prose, "detail", image_id=i)[0][0] for i in range(50)} <= set(ct.DEFAULT_DETAIL_PROMPTS)


@pytest.mark.parametrize("text, response_type", [
    ("", "conv"), ("   \n", "detail"),
    ("Here you go:\nUser: Q?\nAssistant: A.", "conv"),           # preamble before the first label
    ("User: Q?\nAssistant: A.\nUser: Q2?", "conv"),              # unbalanced
    ("User: Q?\nUser: Q2?\nAssistant: A.", "conv"),              # not alternating
    ("Assistant: A.\nUser: Q?", "conv"),
    ("The image shows a red circle.", "conv"),                   # no pairs
    ("User: Where is it?\nAssistant: According to the captions, top left.", "conv"),
    ("User: Where is it?\nAssistant: Its bounding box is in the corner.", "conv"),
    ("User: Where is it?\nAssistant: At coordinates near the corner.", "conv"),
    ("User: Where is it?\nAssistant: At [0.1, 0.2, 0.3, 0.4].", "conv"),
    ("Question: Why?", "complex"), ("Answer: Because.\nQuestion: Why?", "complex"),
    ("Question: Why?\nAnswer: A.\nQuestion: Again?\nAnswer: B.", "complex"),
    ("User: Q?\nAssistant: A.", "detail"), ("Too short.", "detail"),
])
def test_parse_reply_rejects_malformed(text, response_type):
    with pytest.raises(ct.MalformedReply):
        ct.parse_reply(text, response_type)


def test_all_types_produce_valid_samples_and_send_the_key(stub, client, tmp_path):
    out = tmp_path / "instruct.jsonl"
    result = ct.generate_chat_instructions(make_records(), out, client=client, progress=False)
    assert result["done"] == 9 and result["skipped_existing"] == 0 and result["malformed_failed"] == 0
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["id"] for s in samples] == [f"{i}_{t}" for i in (1, 2, 3) for t in ("conv", "detail", "complex")]
    for s in samples:
        validate_sample(s, "test")
    assert {s["type"] for s in samples} == {"conv", "detail", "complex"}
    assert len(samples[0]["conversations"]) == 4  # two conversation turns
    request = stub.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert set(request["body"]) == {"model", "messages", "temperature"} and request["body"]["model"] == "stub-model"
    final = ct.jsonl_to_llava_json(out, tmp_path / "instruct.json")
    assert [s["id"] for s in read_llava_json(final)] == [s["id"] for s in samples]


def test_no_authorization_header_without_key(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ct.ChatClient(stub.url, "m", sleep=lambda s: None).complete([{"role": "user", "content": "x"}])
    assert "Authorization" not in stub.requests[0]["headers"]


def test_retries_429_500_and_timeouts_then_succeeds(stub, client, sleeps, caplog):
    stub.script = [429, 500, "slow"]
    messages = ct.build_messages(make_records()[0], "complex")
    with caplog.at_level(logging.WARNING):
        reply = client.complete(messages)
    assert ct.parse_reply(reply, "complex")
    assert len(stub.requests) == 4
    assert sleeps == [7.0, 1.0, 2.0]  # Retry-After honoured, then backoff 0.5 * 2**attempt
    assert SECRET not in caplog.text


def test_retry_after_is_capped_and_retries_are_bounded(stub, monkeypatch, sleeps):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    client = ct.ChatClient(stub.url, "m", max_retries=2, max_retry_after=3.0, sleep=sleeps.append)
    stub.default = 429
    with pytest.raises(ct.TeacherError, match="gave up after 3 attempts") as info:
        client.complete([{"role": "user", "content": "x"}])
    assert sleeps == [3.0, 3.0] and SECRET not in str(info.value)


def test_401_fails_fast_without_leaking_the_key(stub, client, sleeps, tmp_path, caplog, capsys):
    stub.default = 401
    out = tmp_path / "instruct.jsonl"
    with caplog.at_level(logging.DEBUG), pytest.raises(ct.TeacherError) as info:
        ct.generate_chat_instructions(make_records(), out, client=client, progress=False)
    message = str(info.value)
    assert "401" in message and "\n" not in message and "invalid key" in message
    assert len(stub.requests) == 1 and sleeps == []
    captured = capsys.readouterr()
    for text in (message, repr(info.value), repr(client), caplog.text, captured.out, captured.err,
                 out.read_text() if out.exists() else ""):
        assert SECRET not in text


def test_malformed_replies_are_reasked_then_counted(stub, client, tmp_path):
    records = make_records()[:2]
    stub.script = ["malformed", "malformed"]  # 1_conv succeeds on the third try
    stub.default = "good"
    out = tmp_path / "instruct.jsonl"
    result = ct.generate_chat_instructions(records, out, client=client, types=("conv",), max_malformed=2,
                                           progress=False)
    assert result["done_ids"] == ["1_conv", "2_conv"] and len(stub.requests) == 4

    stub.default = "malformed"
    out2 = tmp_path / "failing.jsonl"
    result = ct.generate_chat_instructions(records, out2, client=client, types=("detail",), max_malformed=2,
                                           progress=False)
    assert result["malformed_failed"] == 2 and result["malformed_failed_ids"] == ["1_detail", "2_detail"]
    assert set(result["malformed_reasons"]) == {"1_detail", "2_detail"} and result["done"] == 0
    assert len(stub.requests) == 4 + 2 * 3  # one ask plus two re-asks per pair
    assert out2.read_text() == ""

    stub.default = "good"  # a later run retries the failures, since they were never written
    result = ct.generate_chat_instructions(records, out2, client=client, types=("detail",), progress=False)
    assert result["done_ids"] == ["1_detail", "2_detail"]


class InterruptAfter:
    """Wraps a client and raises KeyboardInterrupt on call k + 1, like Ctrl-C mid-run."""

    def __init__(self, client, k):
        self.client, self.k, self.calls = client, k, 0

    def complete(self, messages):
        self.calls += 1
        if self.calls > self.k:
            raise KeyboardInterrupt
        return self.client.complete(messages)


def ids_in(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_interrupted_run_resumes_without_loss_or_duplicates(stub, client, tmp_path):
    records = make_records()
    reference = tmp_path / "reference.jsonl"
    ct.generate_chat_instructions(records, reference, client=client, progress=False)

    out = tmp_path / "instruct.jsonl"
    with pytest.raises(KeyboardInterrupt):
        ct.generate_chat_instructions(records, out, client=InterruptAfter(client, 4), progress=False)
    assert len(ids_in(out)) == 4
    result = ct.generate_chat_instructions(records, out, client=client, progress=False)
    assert result["skipped_existing"] == 4 and result["done"] == 5
    assert ids_in(out) == ids_in(reference)


@pytest.mark.parametrize("tail", [b'{"id": "2_detail", "image": "scene_2.png", "conv', b'{"id": "2_det\n'])
def test_truncated_last_line_is_cut_off_and_redone(stub, client, tmp_path, tail):
    records = make_records()
    out = tmp_path / "instruct.jsonl"
    with pytest.raises(KeyboardInterrupt):
        ct.generate_chat_instructions(records, out, client=InterruptAfter(client, 4), progress=False)
    with open(out, "ab") as f:
        f.write(tail)  # killed mid-write
    result = ct.generate_chat_instructions(records, out, client=client, progress=False)
    ids = ids_in(out)
    assert result["done"] == 5 and len(ids) == len(set(ids)) == 9
    assert ids == [f"{i}_{t}" for i in (1, 2, 3) for t in ("conv", "detail", "complex")]
    assert len(read_llava_json(ct.jsonl_to_llava_json(out, tmp_path / "final.json"))) == 9


def test_corruption_inside_the_file_is_an_error_not_a_guess(stub, client, tmp_path):
    out = tmp_path / "instruct.jsonl"
    out.write_text('{"broken\n{"id": "1_conv"}\n')
    with pytest.raises(DataError, match="line 1"):
        ct.generate_chat_instructions(make_records(), out, client=client, progress=False)


def test_progress_bar_respects_tqdm_disable(stub, client, tmp_path, monkeypatch, capsys):
    records = make_records()[:1]
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    ct.generate_chat_instructions(records, tmp_path / "a.jsonl", client=client, types=("conv",))
    assert "§3 teacher" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    ct.generate_chat_instructions(records, tmp_path / "b.jsonl", client=client, types=("conv",))
    assert "§3 teacher" not in capsys.readouterr().err
