"""§3 GPT-assisted instruction data through any OpenAI-compatible chat endpoint.

The paper shows a *text-only* teacher the symbolic context of an image (captions plus ``category: [x1, y1,
x2, y2]`` boxes, see :mod:`.context`) and asks for one of three response types: a conversation, a detailed
description or a complex-reasoning question and answer (§3). The prompt is a system message per type, a few
hand-written seeds as (user = context, assistant = response) pairs — 2 for conversation (captions only), 3 for
detail, 3 for reasoning — then the query context. The seeds below are this project's own, written for its
coloured-shape scenes with one COCO-like scene per type. Only the standard library talks to the server.

Longer than most modules because a quarter of it is the prompts and seeds themselves, kept beside the parser
that checks each reply against what they ask for.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ..conversation import IMAGE_TOKEN
from ..faults import fault_point
from ..files import cut_torn_last_line, read_jsonl
from .context import symbolic_context
from .llava_json import RESPONSE_TYPES, make_sample, validate_sample, write_llava_json
from .prompts import DETAIL_PROMPTS
from .records import DataError, ImageRecord

log = logging.getLogger(__name__)


class MalformedReply(ValueError):
    """The teacher's reply does not have the requested shape, or reveals its symbolic sources."""


class TeacherError(RuntimeError):
    """The chat endpoint refused the request, or kept failing after all retries."""


_COMMON = ("You will read a text description of one image: a few captions and, when given, object boxes, one per "
           "line as `category: [x1, y1, x2, y2]` with coordinates normalised to 0-1 (x to the right, y downwards). "
           "Write as if you were looking at the image yourself. Never mention captions, boxes, coordinates or "
           "that you were given a description; only state what a viewer of the image could tell.\n")
SYSTEM_PROMPTS = {
    "conv": _COMMON + "Write a conversation of several turns between a person who asks about the image and an "
              "assistant who answers. Ask only questions with a definite answer in the image: what objects there "
              "are, how many, their colours, where they are and where they are relative to each other. Put every "
              "turn on its own line as `User: ...` or `Assistant: ...`, starting with the user.",
    "detail": _COMMON + "Write one rich paragraph that describes the image in detail: every object, its colour "
                "and size, where it is, and how the objects are arranged. No lists and no headings.",
    "complex": _COMMON + "Ask one question about the image that needs reasoning or background knowledge beyond "
                 "simply listing what is visible, then answer it step by step. Format exactly as "
                 "`Question: ...` on one line and `Answer: ...` after it.",
}

# Seeds: (context, response). Conversation seeds carry captions only, as in the paper.
SEEDS = {
    "conv": [
        ("A large red circle at the top left and a small blue triangle at the bottom right.\n"
         "Two shapes on a plain background, a red circle and a blue triangle.\n"
         "A big red circle in the top left corner and a little blue triangle in the bottom right.",
         "User: How many shapes are in the image?\nAssistant: There are two shapes: a red circle and a blue "
         "triangle.\nUser: Where is the red circle?\nAssistant: The red circle is in the top left of the image.\n"
         "User: Is the triangle bigger than the circle?\nAssistant: No, the triangle is small and the circle is "
         "large.\nUser: Which shape is closer to the bottom right corner?\nAssistant: The blue triangle; it sits "
         "in the bottom right, diagonally across from the circle."),
        ("A brown dog lying on a grey couch next to a striped pillow.\nA dog resting on a sofa in a living room.\n"
         "A sleepy dog curled up on the cushions of a couch.",
         "User: What animal is on the couch?\nAssistant: A brown dog.\nUser: What is the dog doing?\nAssistant: "
         "It is lying curled up on the cushions, resting.\nUser: What is next to the dog?\nAssistant: A striped "
         "pillow.\nUser: What colour is the couch?\nAssistant: The couch is grey."),
    ],
    "detail": [
        ("A large green square in the center with a small yellow star at the top right.\nA green square, a yellow "
         "star and a purple hexagon.\nA small purple hexagon in the bottom left, a big green square in the middle.\n\n"
         "square: [0.367, 0.367, 0.633, 0.633]\nstar: [0.750, 0.083, 0.917, 0.250]\n"
         "hexagon: [0.083, 0.750, 0.250, 0.917]",
         "The image shows three shapes on a plain background. A large green square fills the center of the "
         "picture. Up in the top right corner there is a small yellow star, and diagonally opposite it, in the "
         "bottom left corner, a small purple hexagon. The two small shapes frame the big square from opposite "
         "corners, leaving the rest of the image empty."),
        ("An orange cross at the top middle and a blue circle on the left.\nThree shapes: an orange cross, a blue "
         "circle and a red triangle.\nA small red triangle on the right side, level with a large blue circle.\n\n"
         "cross: [0.400, 0.067, 0.600, 0.267]\ncircle: [0.033, 0.333, 0.300, 0.600]\n"
         "triangle: [0.750, 0.417, 0.917, 0.583]",
         "Three shapes are spread across the image. Near the top, in the middle, sits a small orange cross. "
         "Below it and to the left, at middle height, is a large blue circle, and at the same height on the right "
         "side is a small red triangle, so the circle and the triangle face each other across the empty center "
         "while the cross sits above them like the tip of a wide triangle."),
        ("A man riding a bicycle down a city street.\nA cyclist passes a parked car at a traffic light.\n"
         "A person on a bike on a street with a red car.\n\nperson: [0.412, 0.204, 0.575, 0.861]\n"
         "bicycle: [0.389, 0.533, 0.612, 0.948]\ncar: [0.018, 0.571, 0.356, 0.880]\n"
         "traffic light: [0.812, 0.050, 0.866, 0.287]",
         "A man rides a bicycle along a city street, pedalling through the middle of the picture. To his left a "
         "red car is parked at the side of the road, and high up on the right a traffic light hangs above the "
         "street. The scene looks like an ordinary day in town, with the cyclist sharing the road with the car."),
    ],
    "complex": [
        ("Two red circles in opposite corners and a small green triangle in the center.\nA red circle at the top "
         "left, another at the bottom right, a green triangle between them.\n\n"
         "circle: [0.067, 0.067, 0.300, 0.300]\ncircle: [0.700, 0.700, 0.933, 0.933]\n"
         "triangle: [0.433, 0.433, 0.567, 0.567]",
         "Question: If the shapes were sorted into groups by colour, how many groups would there be and what "
         "would each contain?\nAnswer: There would be two groups. The two circles are both red, so they form one "
         "group even though they sit in opposite corners. The triangle in the center is the only green shape, so "
         "it forms a group on its own."),
        ("A large purple hexagon at the top and a small orange star at the bottom.\nA purple hexagon above an "
         "orange star.\n\nhexagon: [0.333, 0.033, 0.667, 0.367]\nstar: [0.433, 0.750, 0.567, 0.883]",
         "Question: If the picture were turned upside down, where would each shape end up?\nAnswer: Turning the "
         "picture upside down swaps top and bottom and also left and right. Both shapes are in the middle column, "
         "so they stay in it: the purple hexagon would move to the bottom middle and the small orange star would "
         "move to the top middle, so the star would then be above the hexagon."),
        ("A family gathered around a table with a birthday cake.\nPeople smiling at a cake with lit candles.\n\n"
         "cake: [0.402, 0.512, 0.598, 0.690]\ndining table: [0.105, 0.480, 0.930, 0.995]\n"
         "person: [0.090, 0.150, 0.330, 0.780]\nperson: [0.640, 0.120, 0.900, 0.800]",
         "Question: What is probably being celebrated, and what is likely to happen next?\nAnswer: A cake with lit "
         "candles in the middle of a table surrounded by smiling people usually means a birthday. Next, the "
         "people will most likely sing, the person whose birthday it is will blow out the candles, and the cake "
         "will be cut and shared."),
    ],
}

DEFAULT_DETAIL_PROMPTS = DETAIL_PROMPTS  # the 16 detail prompts shared with the rule teacher

_LABEL = re.compile(r"^\s*\**\s*(user|assistant|question|answer)\s*\**\s*:\s*\**\s*(.*)$", re.IGNORECASE)
_LEAKS = [(re.compile(r"\bcaptions?\b", re.I), "mentions captions"),
          (re.compile(r"\bbounding[- ]box", re.I), "mentions bounding boxes"),
          (re.compile(r"\bcoordinates?\b", re.I), "mentions coordinates"),
          (re.compile(r"\[\s*-?\d*\.?\d+(\s*,\s*-?\d*\.?\d+)+\s*\]"), "contains a bracketed coordinate list"),
          (re.compile(r"\b(given|provided) (description|context|text)\b", re.I), "mentions its description"),
          (re.compile(r"\bas an ai\b", re.I), "breaks character"),
          (re.compile(re.escape(IMAGE_TOKEN)), f"contains the {IMAGE_TOKEN} placeholder")]


def build_messages(record: ImageRecord, response_type: str) -> list[dict]:
    """[system, (user=context, assistant=response) × seeds, user=query context] for one image (§3)."""
    if response_type not in RESPONSE_TYPES:
        raise ValueError(f"unknown response type {response_type!r}, expected one of {RESPONSE_TYPES}")
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[response_type]}]
    for context, response in SEEDS[response_type]:
        messages += [{"role": "user", "content": context}, {"role": "assistant", "content": response}]
    messages.append({"role": "user", "content": symbolic_context(record, with_boxes=True)})
    return messages


def _labelled(text: str, allowed: set[str]) -> list[list[str]]:
    """Split text into [label, body] turns; unlabelled lines continue the previous turn."""
    turns: list[list[str]] = []
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m and m.group(1).lower() in allowed:
            turns.append([m.group(1).lower(), m.group(2).strip()])
        elif line.strip():
            if not turns:
                raise MalformedReply(f"text before the first {'/'.join(sorted(allowed))} label: {line.strip()[:60]!r}")
            turns[-1][1] = (turns[-1][1] + "\n" + line.strip()).strip()
    return turns


def parse_reply(text: str, response_type: str, *, image_id: int = 0,
                detail_prompts: list[str] | None = None) -> list[tuple[str, str]]:
    """The teacher's reply as (question, answer) turns; raise :class:`MalformedReply` instead of guessing.

    A detailed description gets its question from ``detail_prompts`` (default :data:`DEFAULT_DETAIL_PROMPTS`),
    picked by a generator seeded with ``image_id`` so reruns produce the same data (§3, detailed description).
    """
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("empty reply")
    for pattern, reason in _LEAKS:
        if pattern.search(text):
            raise MalformedReply(f"reply {reason}")
    if response_type == "conv":
        turns = _labelled(text, {"user", "assistant"})
        if not turns:
            raise MalformedReply("no User/Assistant turns")
        for i, (label, body) in enumerate(turns):
            if label != ("user" if i % 2 == 0 else "assistant"):
                raise MalformedReply(f"turn {i + 1} is {label!r}: turns must alternate User/Assistant")
            if not body:
                raise MalformedReply(f"turn {i + 1} ({label}) is empty")
        if len(turns) % 2:
            raise MalformedReply("unbalanced turns: the last question has no answer")
        return [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns), 2)]
    if response_type == "complex":
        turns = _labelled(text, {"question", "answer"})
        if [label for label, _ in turns] != ["question", "answer"]:
            raise MalformedReply(f"expected one Question: then one Answer:, got {[label for label, _ in turns]}")
        if not turns[0][1] or not turns[1][1]:
            raise MalformedReply("empty question or answer")
        return [(turns[0][1], turns[1][1])]
    if response_type == "detail":
        if any(_LABEL.match(line) for line in text.splitlines()):
            raise MalformedReply("a detailed description must be prose, not labelled turns")
        body = text.strip()
        if len(body.split()) < 8:
            raise MalformedReply(f"description too short ({len(body.split())} words)")
        prompts = detail_prompts or DEFAULT_DETAIL_PROMPTS
        return [(random.Random(image_id).choice(prompts), body)]
    raise ValueError(f"unknown response type {response_type!r}, expected one of {RESPONSE_TYPES}")


class ChatClient:
    """A minimal OpenAI-compatible chat client: ``POST {base_url}/chat/completions`` with retries.

    Timeouts, connection errors, HTTP 408/429 and 5xx are retried with exponential backoff (``Retry-After``
    honoured, capped at ``max_retry_after``); any other 4xx fails at once. The key is read from
    ``api_key_env`` and never appears in logs or messages; with the variable unset no Authorization is sent.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60,
                 max_retries: int = 5, backoff: float = 1.0, *, temperature: float = 0.7,
                 max_retry_after: float = 60.0, sleep: Callable[[float], None] = time.sleep):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.max_retries, self.backoff = model, timeout, max_retries, backoff
        self.temperature, self.max_retry_after, self.sleep = temperature, max_retry_after, sleep
        self._key = os.environ.get(api_key_env) or None

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    def _redact(self, text: str) -> str:
        text = re.sub(r"(?i)bearer\s+\S+", "Bearer ***", text)
        return text.replace(self._key, "***") if self._key else text

    def complete(self, messages: list[dict]) -> str:
        """Send one chat request and return ``choices[0].message.content``."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as e:
                short = " ".join(e.read(300).decode("utf-8", "replace").split())[:200]
                reason = f"HTTP {e.code} from {self.url}: {self._redact(short)}"
                if e.code not in (408, 429) and e.code < 500:
                    raise TeacherError(reason) from None
                retry_after = _retry_after_seconds(e.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                reason = f"{type(e).__name__} from {self.url}: {self._redact(str(getattr(e, 'reason', e)))}"
            if attempt == self.max_retries:
                raise TeacherError(f"gave up after {attempt + 1} attempts; last: {reason}")
            delay = self.backoff * 2 ** attempt if retry_after is None else min(retry_after, self.max_retry_after)
            log.warning("teacher: %s; retry %d/%d in %.1f s", reason, attempt + 1, self.max_retries, delay)
            self.sleep(delay)
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            head = self._redact(raw[:80].decode("utf-8", "replace"))
            raise MalformedReply(f"response is not a chat completion: {head!r}") from None
        if not isinstance(content, str):
            raise MalformedReply("choices[0].message.content is not a string")
        return content


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _recover_jsonl(path: Path) -> set[str]:
    """Ids already written to ``path``; a torn last line (killed mid-write) is cut off first."""
    if not path.exists():
        return set()
    cut = cut_torn_last_line(path)
    if cut:
        log.warning("%s: cutting off a truncated last line (%d bytes) from an interrupted run", path, cut)
    return {s["id"] for s in _validated_samples(path)}


def _validated_samples(path: Path) -> list[dict]:
    """The teacher's samples in ``path``, each validated (a bad one is a DataError naming its line)."""
    rows = read_jsonl(path)
    for lineno, sample in rows:
        validate_sample(sample, f"{path}: line {lineno}")
    return [sample for _, sample in rows]


def generate_chat_instructions(records: list[ImageRecord], out_jsonl: str | Path, *, client,
                               types: tuple[str, ...] = RESPONSE_TYPES, detail_prompts: list[str] | None = None,
                               max_malformed: int = 3, progress: bool = True) -> dict:
    """Ask the teacher for every (record, type) pair, appending one sample per JSONL line; resumable (§3).

    Pairs whose id ``{image_id}_{type}`` is already in ``out_jsonl`` are skipped. A malformed reply is asked
    again up to ``max_malformed`` times, then counted in ``malformed_failed`` (never dropped silently).
    Each line is flushed and fsynced, so an interrupted run loses at most the sample being written.
    """
    from tqdm.auto import tqdm

    for t in types:
        if t not in RESPONSE_TYPES:
            raise ValueError(f"unknown response type {t!r}, expected one of {RESPONSE_TYPES}")
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = _recover_jsonl(out)
    ids: dict[str, list[str]] = {"done": [], "skipped_existing": [], "malformed_failed": []}
    reasons: dict[str, str] = {}
    jobs = [(record, t) for record in records for t in types]
    # tqdm reads TQDM_* only when imported; look at TQDM_DISABLE now so setting it later still works
    quiet = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    bar = tqdm(jobs, desc="§3 teacher", unit="sample", disable=quiet)
    with open(out, "ab") as f:
        for record, response_type in bar:
            sample_id = f"{record.image_id}_{response_type}"
            if sample_id in existing:
                ids["skipped_existing"].append(sample_id)
                continue
            messages = build_messages(record, response_type)
            for attempt in range(max_malformed + 1):
                try:
                    turns = parse_reply(client.complete(messages), response_type, image_id=record.image_id,
                                        detail_prompts=detail_prompts)
                    fault_point("teacher_reply")  # answered but not yet written: redone on resume
                    break
                except MalformedReply as e:
                    reasons[sample_id] = str(e)
                    log.warning("%s: malformed reply (%s), attempt %d/%d", sample_id, e, attempt + 1,
                                max_malformed + 1)
            else:
                ids["malformed_failed"].append(sample_id)
                continue
            reasons.pop(sample_id, None)
            sample = make_sample(sample_id, record.file_name, turns, response_type)
            validate_sample(sample, f"{out}: {sample_id}")
            f.write((json.dumps(sample, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            fault_point("teacher_written")
            existing.add(sample_id)
            ids["done"].append(sample_id)
    result = {key: len(value) for key, value in ids.items()}
    result.update({f"{key}_ids": value for key, value in ids.items()})
    result["malformed_reasons"] = reasons
    return result


def jsonl_to_llava_json(jsonl: str | Path, json_path: str | Path) -> Path:
    """The generated JSONL as the final LLaVA JSON list (one sample per id, in file order)."""
    samples = _validated_samples(Path(jsonl))
    seen: set[str] = set()
    for s in samples:
        if s["id"] in seen:
            raise DataError(f"{jsonl}: sample id {s['id']!r} appears twice")
        seen.add(s["id"])
    return write_llava_json(json_path, samples)
