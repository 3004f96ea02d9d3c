"""§5 the chat judge: the paper's rubric put to any OpenAI-compatible endpoint, the verdict parsed strictly.

A text-only judge (GPT-4 in the paper) reads a description of the image, the question, the reference answer
(assistant 1) and the candidate's answer (assistant 2) and scores each 1–10; :class:`Verdict` carries the two
scores, and is what every judge returns (the rule judge in :mod:`.judges` too). :class:`ChatJudge` retries a
malformed reply, counts a question that never gets a well-formed one as failed (never guessed), and caches
every verdict (:class:`VerdictCache`) so a rerun costs nothing and an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.chat_teacher import MalformedReply
from ..files import DataError, cut_torn_last_line, read_jsonl

# named as before the chat judge moved out of judges.py, so logs (and notebook 09's output) read the same
log = logging.getLogger("minillava.eval.judges")


class MalformedVerdict(MalformedReply):
    """The judge's reply does not start with a line of exactly two scores in 1–10."""


class JudgeFailed(RuntimeError):
    """No usable verdict for one question after all attempts (counted, never guessed)."""


@dataclass
class Verdict:
    score_reference: float
    score_candidate: float
    explanation: str = ""


# --- the chat judge ----------------------------------------------------------------------------------------------

JUDGE_SYSTEM_PROMPT = (
    "You review answers that two AI assistants gave to a user's question about an image. You cannot see the "
    "image; a text description of it (captions and, when given, object boxes as `category: [x1, y1, x2, y2]` "
    "in 0-1 coordinates) stands in for it. Judge each answer for helpfulness, relevance, accuracy and level of "
    "detail, and give each assistant one overall score from 1 to 10, higher meaning better.\n"
    "Reply in this exact form: the first line holds only the two scores, Assistant 1 first, separated by a "
    "single space (for example `7 4`). From the second line on, explain the scores briefly. Judge the "
    "content, not the order in which the answers are shown or their length."
)


def judge_messages(context: str, question: str, reference: str, candidate: str,
                   system_prompt: str = JUDGE_SYSTEM_PROMPT) -> list[dict]:
    """[system rubric, user = description + question + assistant 1 (reference) + assistant 2 (candidate)]."""
    user = (f"[Image description]\n{context}\n\n[Question]\n{question}\n\n"
            f"[Assistant 1]\n{reference}\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{candidate}\n[End of Assistant 2]")
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


_SCORE = r"(10(?:\.0+)?|[1-9](?:\.\d+)?)"
_VERDICT_LINE = re.compile(rf"^\s*{_SCORE}\s*(?:,\s*|\s+){_SCORE}\s*$")


def parse_verdict(text: str) -> Verdict:
    """The first non-blank line must be exactly two scores in 1–10 ("8 6" or "8, 6"); anything else is
    rejected with :class:`MalformedVerdict`, never guessed. The rest of the reply is the explanation."""
    if not isinstance(text, str) or not text.strip():
        raise MalformedVerdict("empty verdict")
    first, _, rest = text.strip().partition("\n")
    m = _VERDICT_LINE.match(first)
    if not m:
        raise MalformedVerdict(f"first line is not two scores in 1-10: {first.strip()[:60]!r}")
    return Verdict(float(m.group(1)), float(m.group(2)), rest.strip())


class VerdictCache:
    """Append-only JSONL of verdicts keyed by a hash; a torn last line (killed mid-write) is cut off."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.rows: dict[str, dict] = {}
        if self.path is None or not self.path.exists():
            return
        cut = cut_torn_last_line(self.path)
        if cut:
            log.warning("%s: cutting off a truncated last line from an interrupted run", self.path)
        for lineno, row in read_jsonl(self.path):
            try:
                self.rows[row["key"]] = row
            except (KeyError, TypeError):
                raise DataError(f"{self.path}: line {lineno}: not a verdict cache row") from None

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, row: dict) -> None:
        self.rows[row["key"]] = row
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() and not self._ends_with_newline():
                f.write(b"\n")
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


class ChatJudge:
    """The paper's rubric through an OpenAI-compatible endpoint (``client``: a ChatClient, or anything with
    ``.model`` and ``.complete(messages) -> str``).

    The reference is shown as assistant 1 and the candidate as assistant 2, as in the paper's evaluation.
    A reply whose first line is not two scores is asked again up to ``max_malformed`` times, then the question
    counts as failed (:class:`JudgeFailed`); a failed verdict is not cached, so a rerun asks again. Transport
    errors are retried inside the ChatClient; when it gives up, its ``TeacherError`` ends the run, and the cache
    lets the next run resume. Each verdict is cached under a hash of (judge model, rubric, context, question,
    both answers, repeat index), so ``repeats`` > 1 asks k independent times and reruns make no requests.
    For the paper's setting build the client with a low temperature (the authors used 0.2).
    """

    name = "chat"

    def __init__(self, client, *, cache_path: str | Path | None = None, repeats: int = 1, max_malformed: int = 2,
                 system_prompt: str = JUDGE_SYSTEM_PROMPT):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.client, self.repeats, self.max_malformed = client, repeats, max_malformed
        self.system_prompt = system_prompt
        self.cache = VerdictCache(cache_path)
        self.stats = {"requests": 0, "cache_hits": 0, "malformed": 0, "failed": 0, "verdicts": 0}

    def describe(self) -> dict:
        return {"name": self.name, "model": getattr(self.client, "model", None), "repeats": self.repeats}

    def cache_key(self, context: str, question: str, reference: str, candidate: str, repeat: int) -> str:
        payload = [getattr(self.client, "model", None), self.system_prompt, context, question, reference, candidate,
                   repeat]
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()

    def score(self, question: dict, reference: str, candidate: str, context: dict | None, repeat: int = 0) -> Verdict:
        text = (context or {}).get("context") or "(no description of the image is available)"
        key = self.cache_key(text, question["text"], reference, candidate, repeat)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return Verdict(*hit["scores"], hit.get("explanation", ""))
        messages = judge_messages(text, question["text"], reference, candidate, self.system_prompt)
        reasons = []
        for attempt in range(self.max_malformed + 1):
            self.stats["requests"] += 1
            try:
                verdict = parse_verdict(self.client.complete(messages))
                break
            except MalformedReply as e:  # a malformed verdict, or a body that is not a chat completion
                self.stats["malformed"] += 1
                reasons.append(str(e))
                log.warning("question %s: malformed verdict (%s), attempt %d/%d", question["question_id"], e,
                            attempt + 1, self.max_malformed + 1)
        else:
            self.stats["failed"] += 1
            raise JudgeFailed(f"question {question['question_id']}: no well-formed verdict in "
                              f"{self.max_malformed + 1} attempts; last: {reasons[-1]}")
        self.cache.put({"key": key, "model": getattr(self.client, "model", None),
                        "question_id": question["question_id"], "repeat": repeat,
                        "scores": [verdict.score_reference, verdict.score_candidate],
                        "explanation": verdict.explanation})
        self.stats["verdicts"] += 1
        return verdict
