"""How the rule judge reads a free-text answer: which objects it mentions, with which colour, size and place.

§5's judge compares an answer with what the image holds. The rule judge (:mod:`.judges`) does it from the scene's
ground truth, so it must first read the answer's claims: every mention of a shape, with the colour and size words
before it and the grid position in its clause ("a large red circle at the top left"), negations dropped ("no
blue star"). :func:`detail_f1` then scores a detailed description by fact precision and recall against the
scene's objects, one fact per object plus one per stated attribute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.grid import POSITIONS
from ..data.shapes import COLORS, SHAPES


_SIZE_WORDS = {"large": "large", "big": "large", "small": "small", "little": "small", "tiny": "small"}


def normalise(text: str) -> str:
    """Lower case, hyphens to spaces ("top-left" → "top left"), one space between words."""
    return " ".join(text.lower().replace("-", " ").split())


def _plural_pattern(noun: str) -> str:
    return re.escape(noun) + ("(?:es)?" if noun.endswith(("s", "x", "ch", "sh")) else "s?")


@dataclass
class Mention:
    """One object named in an answer: '<size> <color> <shape>', each attribute optional except the shape."""

    shape: str
    color: str | None = None
    size: str | None = None
    position: str | None = None
    start: int = 0
    end: int = 0

    def stated(self) -> dict:
        return {k: v for k, v in (("color", self.color), ("size", self.size), ("position", self.position)) if v}


def _mention_regex(vocabulary: list[str]) -> re.Pattern:
    nouns = "|".join(_plural_pattern(n) for n in sorted(vocabulary, key=len, reverse=True))
    sizes = "|".join(_SIZE_WORDS)
    colors = "|".join(COLORS)
    return re.compile(rf"\b(?:(?P<size>{sizes})\s+)?(?:(?P<color>{colors})\s+)?(?P<shape>{nouns})\b")


NEGATION = re.compile(r"\b(?:no|not\s+an?|not\s+any|without\s+an?|without)\s+$")
_POSITION_RE = re.compile(r"\b(" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r")\b")


def find_mentions(text: str, vocabulary: list[str] | None = None) -> list[Mention]:
    """Objects named in ``text``, each with the position phrase that goes with it, if any.

    A mention is '[size] [colour] <shape>' (plurals and big/little/tiny accepted); one negated by a preceding
    "no" / "not a" / "without" ("there is no green star") is not a claim and is skipped. Positions are paired
    within a sentence: in order when the sentence names as many positions as objects ("at the top left there
    is a red circle and at the center a blue star"); otherwise clause by clause (split at commas and "and"; a
    clause with a position but no object joins the next), in order when the clause's counts match, else each
    position goes to the closest object named before it ("a red and a blue star at the center"), or to the
    first one after it when none comes before.
    """
    vocab = list(vocabulary or SHAPES)
    regex = _mention_regex(vocab)
    canonical = {v: v for v in vocab}
    mentions: list[Mention] = []
    for sentence in re.split(r"[.;!?\n]+", normalise(text)):
        found = []
        for m in regex.finditer(sentence):
            if NEGATION.search(sentence[:m.start()]):
                continue
            noun = m.group("shape")
            shape = next(v for v in sorted(canonical, key=len, reverse=True) if re.fullmatch(_plural_pattern(v), noun))
            found.append(Mention(shape, m.group("color"), _SIZE_WORDS.get(m.group("size") or ""), None,
                                 m.start(), m.end()))
        places = [(p.group(1), p.start(), p.end()) for p in _POSITION_RE.finditer(sentence)]
        _pair_positions(sentence, found, places)
        mentions += found
    return mentions


_CLAUSE = re.compile(r",|\band\b")


def _pair_positions(sentence: str, found: list[Mention], places: list[tuple[str, int, int]]) -> None:
    """Give mentions their position phrases (see :func:`find_mentions`)."""
    if not found or not places:
        return
    if len(found) == len(places):
        for mention, (pos, _, _) in zip(found, places):
            mention.position = pos
        return
    bounds = [0] + [m.end() for m in _CLAUSE.finditer(sentence)] + [len(sentence) + 1]
    units, pending = [], []  # a clause with positions but no object ("at the top left, ...") joins the next
    for lo, hi in zip(bounds, bounds[1:]):
        ms = [m for m in found if lo <= m.start < hi]
        ps = pending + [p for p in places if lo <= p[1] < hi]
        if ms:
            units.append((ms, ps))
            pending = []
        else:
            pending = ps
    for ms, ps in units:
        if len(ms) == len(ps):
            for mention, (pos, _, _) in zip(ms, ps):
                mention.position = pos
            continue
        best: dict[int, tuple[int, str]] = {}
        for pos, s, e in ps:
            before = [i for i, m in enumerate(ms) if m.end <= s]
            i = before[-1] if before else 0  # "a red circle ... at the top left": the object named before it
            dist = abs(s - ms[i].end) if before else abs(ms[i].start - e)
            if i not in best or dist < best[i][0]:
                best[i] = (dist, pos)
        for i, (_, pos) in best.items():
            ms[i].position = pos


def _merge_mentions(mentions: list[Mention]) -> list[Mention]:
    """Drop repeats: a mention whose stated facts are all stated, identically, by another mention."""
    def facts(m):
        return {"shape": m.shape, **m.stated()}

    kept = []
    for i, m in enumerate(mentions):
        mine = facts(m).items()
        covered = any(j != i and mine <= facts(o).items() and (len(facts(o)) > len(facts(m)) or j < i)
                      for j, o in enumerate(mentions))
        if not covered:
            kept.append(m)
    return kept


def _agreement(m: Mention, obj: dict) -> int | None:
    """How many of the mention's stated facts the object shares (None: a different shape, no match)."""
    if m.shape != obj["category"]:
        return None
    return sum(obj.get(k) == v for k, v in m.stated().items())


def mention_exists(m: Mention, objects: list[dict]) -> bool:
    """Some object has the mention's shape and every colour / size the mention states (position not needed)."""
    return any(o["category"] == m.shape and (m.color is None or o.get("color") == m.color)
               and (m.size is None or o.get("size") == m.size) for o in objects)


def detail_f1(text: str, objects: list[dict]) -> dict:
    """Fact precision / recall / F1 of a description against the scene's objects (see :class:`RuleJudge`)."""
    vocab = sorted(set(SHAPES) | {o["category"] for o in objects})
    mentions = _merge_mentions(find_mentions(text, vocab))
    pairs = sorted(((a, i, j) for i, m in enumerate(mentions) for j, o in enumerate(objects)
                    if (a := _agreement(m, o)) is not None), key=lambda t: (-t[0], t[1], t[2]))
    used_m, used_o, tp = set(), set(), 0
    for agree, i, j in pairs:  # greedy one-to-one matching, most agreeing pairs first
        if i not in used_m and j not in used_o:
            used_m.add(i)
            used_o.add(j)
            tp += 1 + agree
    asserted = sum(1 + len(m.stated()) for m in mentions)
    total = sum(1 + sum(o.get(k) is not None for k in ("color", "size", "position")) for o in objects)
    precision = tp / asserted if asserted else 0.0
    recall = tp / total if total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "mentions": len(mentions),
            "unmatched": len(mentions) - len(used_m)}
