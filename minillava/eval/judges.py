"""§5 judges: score a candidate's answers against reference answers, and the relative score.

The paper's LLaVA-Bench number is a *relative* score: a text-only judge (GPT-4) reads a description of the
image, the question, the reference answer (assistant 1) and the candidate's answer (assistant 2), rates each
1–10 for helpfulness, relevance, accuracy and level of detail, and the reported score is
candidate / reference × 100, per category and overall (§5). As in the authors' summary script, the
ratio is taken of the *mean* scores of a category (equivalently of the sums), not averaged per question.

Two judges share one interface (``score(question, reference, candidate, context, repeat)`` →
:class:`Verdict`):

- :class:`RuleJudge` scores from the scene's ground truth in ``context.jsonl`` (see :mod:`.bench`); it is
  deterministic, free and offline, and the default for the embedded benchmark. Its rules are spelled out on
  the class.
- :class:`~.chat_judge.ChatJudge` (in :mod:`.chat_judge`, re-exported here) puts the paper's rubric to any
  OpenAI-compatible endpoint through :class:`minillava.data.chat_teacher.ChatClient` (retries, backoff, key
  redaction), parses the verdict strictly, caches every verdict so reruns cost nothing, and can judge
  ``repeats`` times for mean ± sd.

:func:`evaluate_answers` scores *any* LLaVA-Bench answers file with either judge.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from .. import paper
from ..data.records import DataError
from ..data.grid import POSITIONS
from ..data.shapes import COLORS, SHAPES
from ..data.teachers import KEY_WORDS, positions_in
from .bench import CATEGORIES, answer_matches, read_answers, read_questions
from .mentions import NEGATION, Mention, detail_f1, find_mentions, mention_exists, normalise  # noqa: F401 (Mention re-exported)
from .chat_judge import (JUDGE_SYSTEM_PROMPT, ChatJudge, JudgeFailed, MalformedVerdict,  # noqa: F401 (re-exported)
                         Verdict, VerdictCache, judge_messages, parse_verdict)
from .published import read_bench_context


_GROUP_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\s+(?:shapes?|objects?|ones?)\b")


class RuleJudge:
    """Deterministic 1–10 scores from the scene's ground truth (``context.jsonl`` rows of the embedded bench).

    Both answers (reference and candidate) are scored by the same rules; the relative score is their ratio.

    **conv** — the fact asked for (``kind`` / ``key``):
      10 if :func:`~minillava.eval.bench.answer_matches` accepts the answer (``answer_is_correct`` with
      positions matched longest first); otherwise
      4 if it is half right: it names the right value among others ("red or blue"), or for a position a wrong
      cell in the right row or column, or for a relation some but not all of the right directions;
      2 if it names no value of the asked kind at all (no answer to the question);
      1 if it names only wrong values.
      Then 2 points off (never below 1) if the answer names an object that is not in the scene (a shape, with
      any colour / size it states, that no object has; negated mentions like "no green star" do not count).

    **detail** — fact recall and precision of the description. The scene has, per object, 4 facts: shape,
      colour, size, position (3×3 grid cell). Each "[size] [colour] <shape>" mention asserts its shape plus the
      attributes it states, and the position phrase in its sentence. Mentions are matched one-to-one to objects
      of the same shape (most agreeing first); a matched mention earns its agreeing facts, an unmatched one (a
      hallucinated object) earns none. precision = earned / asserted, recall = earned / scene facts,
      score = 1 + 9 × F1. Repeated mentions of the same object ("the red circle" again) count once.

    **complex** — the final answer and the facts used: score = 1 + 6 × [final answer right] + 3 × p, where the
      final answer is checked by :func:`~minillava.eval.bench.answer_matches` with kind ``reasoning`` (the
      last number word for a "how many" question, otherwise the yes/no verdict the answer starts with) and p
      is the fraction of the answer's object mentions (shapes, and colour groups such as "red shapes") that
      exist in the scene or are named in the question (hypotheticals like "if one more star were added").
      An answer that names no object at all gets p = 0: it shows no reasoning.
    """

    name = "rule"
    repeats = 1

    def __init__(self):
        self.stats = {"verdicts": 0}

    def describe(self) -> dict:
        return {"name": self.name, "repeats": 1}

    def score(self, question: dict, reference: str, candidate: str, context: dict | None, repeat: int = 0) -> Verdict:
        if context is None or not isinstance(context.get("objects"), list):
            raise DataError(f"question {question['question_id']}: the rule judge needs a context row with 'objects'")
        category = question["category"]
        if category in ("conv", "complex") and not (isinstance(context.get("kind"), str)
                                                    and isinstance(context.get("key"), str)):
            raise DataError(f"question {question['question_id']}: context row has no 'kind' / 'key' for {category}")
        parts = [self.score_answer(category, question["text"], text, context) for text in (reference, candidate)]
        self.stats["verdicts"] += 1
        return Verdict(parts[0][0], parts[1][0], f"reference: {parts[0][1]}; candidate: {parts[1][1]}")

    def score_answer(self, category: str, question_text: str, text: str, context: dict) -> tuple[float, str]:
        """(score 1–10, a short reason) for one answer."""
        objects = context["objects"]
        if category == "conv":
            return self._conv(question_text, text, context["kind"], context["key"], objects)
        if category == "detail":
            r = detail_f1(text, objects)
            return round(1 + 9 * r["f1"], 2), (f"precision {r['precision']:.2f}, recall {r['recall']:.2f}, "
                                               f"{r['unmatched']} object(s) not in the scene")
        if category == "complex":
            return self._complex(question_text, text, context["key"], objects)
        raise ValueError(f"unknown category {category!r}")

    @staticmethod
    def _conv(question_text: str, text: str, kind: str, key: str, objects: list[dict]) -> tuple[float, str]:
        words = " " + normalise(re.sub(r"[.,?!;:]", " ", text)) + " "
        if answer_matches(kind, key, question_text, text):
            score, why = 10, "right"
        else:
            if kind == "position":
                found = positions_in(words)
            elif kind == "relation":
                found = {r for r in KEY_WORDS["relation"] if f" {r} " in words}
            else:
                found = {c for c in (KEY_WORDS.get(kind) or set(KEY_WORDS["count"]) | {"yes"})
                         if f" {c} " in words}
            half = False
            if kind == "position" and len(found) == 1:
                (pos,) = found
                (r1, c1), (r2, c2) = divmod(POSITIONS.index(pos), 3), divmod(POSITIONS.index(key), 3)
                half = r1 == r2 or c1 == c2
            elif kind == "relation":
                wanted = {r for r in KEY_WORDS["relation"] if r in key}
                half = bool(found & wanted)
            elif key in found:
                half = True
            score, why = (4, "half right") if half else (2, "no answer") if not found else (1, "wrong")
        vocab = sorted(set(SHAPES) | {o["category"] for o in objects})
        ghosts = [m for m in find_mentions(text, vocab) if not mention_exists(m, objects)]
        if ghosts:
            score = max(1, score - 2)
            why += f", names {len(ghosts)} object(s) not in the scene"
        return float(score), why

    @staticmethod
    def _complex(question_text: str, text: str, key: str, objects: list[dict]) -> tuple[float, str]:
        right = answer_matches("reasoning", key, question_text, text)
        vocab = sorted(set(SHAPES) | {o["category"] for o in objects})
        asked_shapes = {m.shape for m in find_mentions(question_text.replace(" no ", " "), vocab)}
        asked_colors = set(re.findall("|".join(COLORS), question_text.lower()))
        supported = total = 0
        for m in find_mentions(text, vocab):
            total += 1
            supported += mention_exists(m, objects) or m.shape in asked_shapes
        norm = normalise(text)
        for g in _GROUP_RE.finditer(norm):
            if NEGATION.search(norm[:g.start()]):
                continue
            total += 1
            supported += g.group(1) in asked_colors or any(o.get("color") == g.group(1) for o in objects)
        p = supported / total if total else 0.0
        score = 1 + 6 * right + 3 * p
        return round(score, 2), (f"final answer {'right' if right else 'wrong'}, "
                                 f"{supported}/{total} object mentions grounded")


# --- relative scores and whole-file evaluation --------------------------------------------------------------------

def _as_repeats(entry) -> list[tuple[float, float]]:
    """A per-question entry is one (reference, candidate) pair or a list of them, one per repeat."""
    if len(entry) == 2 and all(isinstance(v, (int, float)) for v in entry):
        return [(float(entry[0]), float(entry[1]))]
    return [(float(r), float(c)) for r, c in entry]


def relative_scores(pairs_by_category: dict[str, list]) -> dict[str, dict]:
    """Relative score per category and over all questions: mean candidate / mean reference × 100.

    ``pairs_by_category`` maps a category to its questions' scores: each a (reference, candidate) pair, or a
    list of pairs, one per repeat of a stochastic judge. With k repeats the score is computed for each repeat
    and reported as the mean, with ``sd`` the sample standard deviation over repeats (None for k = 1).
    "all" pools every question (as the authors' summary script does), so it weights categories by their size.
    """
    def summarise(entries: list) -> dict:
        per_q = [_as_repeats(e) for e in entries]
        if not per_q:
            return {"score": None, "sd": None, "reference": None, "candidate": None, "n": 0, "repeats": 0}
        k = min(len(p) for p in per_q)
        if any(len(p) != k for p in per_q):
            raise ValueError("every question needs the same number of repeats")
        scores, refs, cands = [], [], []
        for r in range(k):
            ref = sum(p[r][0] for p in per_q) / len(per_q)
            cand = sum(p[r][1] for p in per_q) / len(per_q)
            refs.append(ref)
            cands.append(cand)
            scores.append(cand / ref * 100 if ref else None)
        if any(v is None for v in scores):  # a reference scored 0 everywhere: no ratio to report
            return {"score": None, "sd": None, "reference": statistics.fmean(refs),
                    "candidate": statistics.fmean(cands), "n": len(per_q), "repeats": k}
        return {"score": statistics.fmean(scores), "sd": statistics.stdev(scores) if k > 1 else None,
                "reference": statistics.fmean(refs), "candidate": statistics.fmean(cands),
                "n": len(per_q), "repeats": k}

    out = {c: summarise(pairs_by_category[c]) for c in CATEGORIES if c in pairs_by_category}
    out.update({c: summarise(v) for c, v in pairs_by_category.items() if c not in out and c != "all"})
    out["all"] = summarise([e for c, v in pairs_by_category.items() if c != "all" for e in v])
    return out


def evaluate_answers(questions_path: str | Path, answers_path: str | Path, judge, references_path: str | Path,
                     context_path: str | Path | None = None, *, progress: bool = False) -> dict:
    """Score an answers file (any model's, in LLaVA-Bench format) against the references with ``judge``.

    Every question must have exactly one candidate answer and one reference answer (a DataError says which
    are missing or unknown). ``context_path`` may be in any of the layouts of :mod:`.published` (the authors'
    COCO or In-the-Wild files, or ours). Questions whose verdict failed are listed in ``failed`` and left out of the
    relative scores. Returns ``{"judge", "model_id", "relative", "per_question", "failed", "stats",
    "context_layout"}``.
    """
    questions = read_questions(questions_path)
    answers = {str(a["question_id"]): a for a in read_answers(answers_path)}
    references = {str(a["question_id"]): a for a in read_answers(references_path)}
    contexts, layout = read_bench_context(context_path, questions) if context_path is not None else ({}, "ours")
    ids = {str(q["question_id"]) for q in questions}
    for name, rows, path in (("answers", answers, answers_path), ("references", references, references_path)):
        missing = [q["question_id"] for q in questions if str(q["question_id"]) not in rows]
        unknown = sorted(set(rows) - ids)
        if missing:
            raise DataError(f"{path}: {name} lack {len(missing)} of {len(questions)} questions "
                            f"(first missing question_id: {missing[0]!r})")
        if unknown:
            raise DataError(f"{path}: {name} for question ids not in {questions_path} (first: {unknown[0]!r})")
    repeats = getattr(judge, "repeats", 1)
    per_question, failed = [], []
    by_category: dict[str, list] = {c: [] for c in CATEGORIES if any(q["category"] == c for q in questions)}
    iterator = questions
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(questions, desc=f"judge ({judge.name})", unit="question")
    for q in iterator:
        qid = str(q["question_id"])
        reference, candidate = references[qid]["text"], answers[qid]["text"]
        verdicts, reason = [], None
        for r in range(repeats):
            try:
                verdicts.append(judge.score(q, reference, candidate, contexts.get(qid), repeat=r))
            except JudgeFailed as e:
                reason = str(e)
                break
        row = {"question_id": q["question_id"], "category": q["category"], "image": q["image"],
               "question": q["text"], "reference": reference, "candidate": candidate,
               "reference_id": references[qid].get("answer_id", q["question_id"]),
               "answer_id": answers[qid].get("answer_id", q["question_id"])}
        if reason is not None:
            failed.append(q["question_id"])
            per_question.append({**row, "failed": True, "reason": reason})
            continue
        scores = [[v.score_reference, v.score_candidate] for v in verdicts]
        by_category.setdefault(q["category"], []).append(scores)
        per_question.append({**row, "failed": False, "scores": scores,
                             "score_reference": statistics.fmean(s[0] for s in scores),
                             "score_candidate": statistics.fmean(s[1] for s in scores),
                             "explanation": verdicts[0].explanation})
    model_ids = sorted({a.get("model_id", "unknown") for a in answers.values()})
    return {"judge": judge.describe(), "model_id": model_ids[0] if len(model_ids) == 1 else model_ids,
            "relative": relative_scores(by_category), "per_question": per_question, "failed": failed,
            "stats": dict(judge.stats), "context_layout": layout}


PAPER_TABLE4_FULL = paper.TABLE4_FULL  # LLaVA, full data (Table 4; minillava/paper.py)


def format_table(relative: dict, title: str = "ours") -> str:
    """A markdown table of relative scores (± sd when repeated) beside the paper's full-data LLaVA row."""
    def cell(d):
        if d is None or d.get("score") is None:
            return "–"
        return f"{d['score']:.1f}" + (f" ± {d['sd']:.1f}" if d.get("sd") is not None else "")

    cols = [c for c in (*CATEGORIES, "all") if c in relative]
    head = "| | " + " | ".join(c.capitalize() for c in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    ours = f"| {title} | " + " | ".join(cell(relative[c]) for c in cols) + " |"
    paper = "| paper (LLaVA, full data) | " + " | ".join(str(PAPER_TABLE4_FULL.get(c, "–")) for c in cols) + " |"
    return "\n".join([head, rule, ours, paper])
