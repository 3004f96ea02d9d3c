"""§3 rule teacher: instruction data computed from the symbolic context alone, offline.

The paper asks a text-only GPT to turn captions + boxes into three kinds of response. This teacher does the
same job with rules, so the default pipeline needs no network and every answer is *provably* entailed by the
context: object types and counts come from the boxes, positions from box centres on a 3×3 grid, colours and
sizes from the instance attributes (the embedded scenes have them; real COCO does not, and then those
questions are simply not asked).

- ``conv``    multi-turn Q&A with definite answers (types, counts, colours, sizes, positions, relations)
- ``detail``  one of the 16 detail prompts → a whole-scene description
- ``complex`` a multi-step question (counting after a change, comparing groups) with its reasoning

Every question is also a :class:`QA` carrying its ``kind`` and its short ``key`` answer, which is what the
exact-match evaluation checks.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .llava_json import make_sample
from .prompts import DETAIL_PROMPTS
from .records import ImageRecord, ObjectRecord
from . import grid
from .grid import POSITIONS, cell_of_box
from .shapes import COLORS, SHAPES
from .words import a, count_phrase, join_words, number, plural

def there_are(noun: str, n: int) -> str:
    """'There is one circle.' / 'There are two circles.' / 'There are no circles.'"""
    return f"There {'is' if n == 1 else 'are'} {number(n)} {plural(noun, n)}."


@dataclass
class QA:
    """One question with its full answer, its kind and the short key answer that exact-match scoring checks."""

    question: str
    answer: str
    kind: str  # color / shape / size / count / position / exists / relation / reasoning
    key: str


def position(obj: ObjectRecord, record: ImageRecord) -> str:
    """Where the box centre falls on a 3×3 grid of the image: 'top left' ... 'bottom right'."""
    return POSITIONS[cell_of_box(obj.bbox, record.width, record.height)]


def describe(obj: ObjectRecord, with_size: bool = True) -> str:
    """'large red circle' for an embedded shape, 'dog' for a COCO object without attributes."""
    words = [obj.size if with_size else None, obj.color, obj.category]
    return " ".join(w for w in words if w)


def name(obj: ObjectRecord) -> str:
    """The shortest name for an object: 'red circle' (or 'dog')."""
    return describe(obj, with_size=False)


def relation(a_obj: ObjectRecord, b_obj: ObjectRecord, record: ImageRecord) -> str:
    """'above', 'below and to the left of', ... from the two box centres (by grid cell, so it is unambiguous)."""
    cell_a, cell_b = (cell_of_box(o.bbox, record.width, record.height) for o in (a_obj, b_obj))
    return grid.relation(cell_a, cell_b) or "next to"


def crowded(record: ImageRecord) -> set[str]:
    """Categories with a COCO crowd box (``iscrowd``: one box around many instances): never counted."""
    return {o.category for o in record.objects if o.attributes.get("crowd")}


def object_at(record: ImageRecord, pos: str) -> ObjectRecord | None:
    """The object whose box centre falls in grid cell ``pos`` ('top left' ...), or None (at most one per cell)."""
    return next((o for o in record.objects if position(o, record) == pos), None)


def cell_by_cell(record: ImageRecord) -> str:
    """What stands in each of the nine cells, row by row, empty ones included — the caption twin of the chat LM's
    cell words: "Top left: a large red circle. Top center: nothing. ..." Going from a named cell to its content is
    the lookup "What is at the {position}?" needs, and no other caption asks it of every cell."""
    return " ".join(f"{pos[0].upper()}{pos[1:]}: {a(describe(obj)) if (obj := object_at(record, pos)) else 'nothing'}."
                    for pos in POSITIONS)


def what_is_at(record: ImageRecord, pos: str, worked: bool = False) -> QA:
    """'What is at the {pos}?', answered with the object there or 'nothing' (a ``shape`` question).

    ``worked``: every object in its cell first, then the answer — "At the top center there is a large red circle
    and at the bottom left there is a small blue square, so at the top left there is nothing." Going from a named
    cell to what stands there is a lookup the image model does not learn; going from each object to its cell it
    does (position questions), so the worked answer turns the one into the other, reasoning first (§5.2, Table 8).
    The cell comes before its object, so the last step can copy what followed the asked cell's name; measured, the
    quickstart model writes the list right but does not read it (``benchmarks/README.md``), so the option is off."""
    obj = object_at(record, pos)
    what = a(describe(obj)) if obj else "nothing"
    answer = f"There is {what} at the {pos}."
    if worked:
        ordered = sorted(record.objects, key=lambda o: POSITIONS.index(position(o, record)))
        listed = join_words([f"at the {position(o, record)} there is {a(describe(o))}" for o in ordered])
        answer = f"A{listed[1:]}, so at the {pos} there is {what}."
    return QA(f"What is at the {pos}?", answer, "shape", obj.category if obj else "nothing")


MAX_TURNS = 4  # a conversation sample asks 2 to this many of the scene's questions unless told otherwise
BINDING_KINDS = ("position", "size", "relation")  # the questions that name an object by its colour and its shape


def needs_binding(qa: QA, record: ImageRecord) -> bool:
    """Whether ``qa`` names its (first) object by colour and shape, and another object of the scene has that shape:
    a blue circle beside the asked red circle, so the shape word alone does not find the object."""
    named = re.match(r"(?:Where is|Is) the (\w+) (\w+)", qa.question)
    return qa.kind in BINDING_KINDS and bool(named) and \
        any(o.category == named.group(2) and o.color != named.group(1) for o in record.objects)


def _unique(record: ImageRecord, key) -> list[ObjectRecord]:
    counts = Counter(key(o) for o in record.objects)
    return [o for o in record.objects if counts[key(o)] == 1]


def relation_answer(first: ObjectRecord, second: ObjectRecord, record: ImageRecord, worked: bool = False) -> str:
    """'The red circle is above the blue square.', or ``worked``: the two cells first, then the relation.

    A relation is two lookups and a comparison. The worked answer says the lookups aloud, so each step is a short
    one the model can learn on its own — the paper's reasoning-first order (§5.2, Table 8), on a small scale."""
    rel = relation(first, second, record)
    if not worked:
        return f"The {name(first)} is {rel} the {name(second)}."
    return (f"The {name(first)} is at the {position(first, record)} and the {name(second)} is at the "
            f"{position(second, record)}, so the {name(first)} is {rel} the {name(second)}.")


def scene_questions(record: ImageRecord, rng: random.Random, occupied: float = 0.0,
                    worked: bool = False, worked_what_at: bool = False) -> list[QA]:
    """Every definite-answer question this teacher can ask about ``record``, in a shuffled order.

    "What is at the {position}?" asks of one of the nine cells drawn at random, or with chance ``occupied`` of one
    that holds an object: with 1–4 objects a random cell is empty about three times in four, so data made with
    ``occupied = 0`` rewards answering "nothing" without looking. ``worked``: relations are answered with the two
    cells first (``relation_answer``); ``worked_what_at``: "What is at" with every object's cell first
    (``what_is_at``); the questions, keys and random draws are the same either way."""
    qas: list[QA] = []
    objs = record.objects
    categories = Counter(o.category for o in objs)
    has_attrs = bool(objs) and all(o.color for o in objs)
    crowds = crowded(record)
    vocabulary = list(SHAPES) if has_attrs else sorted(set(categories) - crowds)

    # counts, of everything and of one category (possibly zero, which is still a definite answer)
    if not crowds:
        qas.append(QA("How many objects are there in the image?" if not has_attrs else "How many shapes are there?",
                      there_are("object" if not has_attrs else "shape", len(objs)), "count", number(len(objs))))
    if vocabulary:  # a COCO image with captions but no boxes (real COCO has them) names no category to ask about
        asked = rng.choice(vocabulary)
        qas.append(QA(f"How many {plural(asked)} are there?", there_are(asked, categories[asked]), "count",
                      number(categories[asked])))

    # position of a uniquely named object, and the object at a position
    for obj in _unique(record, name):
        pos = position(obj, record)
        qas.append(QA(f"Where is the {name(obj)}?", f"The {name(obj)} is at the {pos}.", "position", pos))
    if has_attrs:
        pos = rng.choice(POSITIONS)
        if occupied and rng.random() < occupied:  # drawn only when asked for: the default questions stay as they were
            pos = position(rng.choice(objs), record)
        qas.append(what_is_at(record, pos, worked_what_at))
        if (obj := object_at(record, pos)) is not None:
            qas.append(QA(f"What color is the shape at the {pos}?", f"The {obj.category} at the {pos} is {obj.color}.",
                          "color", obj.color))

        for obj in _unique(record, lambda o: o.category):
            qas.append(QA(f"What color is the {obj.category}?", f"The {obj.category} is {obj.color}.", "color",
                          obj.color))
        for obj in _unique(record, lambda o: o.color):
            qas.append(QA(f"What shape is the {obj.color} object?", f"The {obj.color} object is {a(obj.category)}.",
                          "shape", obj.category))
        for obj in _unique(record, name):
            qas.append(QA(f"Is the {name(obj)} large or small?", f"The {name(obj)} is {obj.size}.", "size",
                          obj.size))

        # existence: one present and one absent combination, so "yes" is not always right
        present = rng.choice(objs)
        qas.append(QA(f"Is there {a(name(present))} in the image?", f"Yes, there is {a(name(present))}.", "exists",
                      "yes"))
        absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in {name(o) for o in objs}]
        missing = rng.choice(absent)
        qas.append(QA(f"Is there {a(missing)} in the image?", f"No, there is no {missing}.", "exists", "no"))
    else:
        for category in categories:
            n = "many" if category in crowds else number(categories[category])
            qas.append(QA(f"Is there {a(category)} in the image?",
                          f"Yes, there {'is' if n == 'one' else 'are'} {n} {plural(category, 1 if n == 'one' else 2)}.",
                          "exists", "yes"))

    # relative position of two uniquely named objects
    unique = _unique(record, name)
    if len(unique) >= 2:
        first, second = rng.sample(unique, 2)
        qas.append(QA(f"Where is the {name(first)} relative to the {name(second)}?",
                      relation_answer(first, second, record, worked), "relation", relation(first, second, record)))
    rng.shuffle(qas)
    return qas


def describe_scene(record: ImageRecord) -> str:
    """The detailed description: what and where, row by row; captions stand in when there are no attributes."""
    objs = record.objects
    if not objs or not all(o.color for o in objs):
        counts = Counter(o.category for o in objs)
        text = record.captions[0].rstrip(".") + "."
        if counts:
            crowds = crowded(record)
            listed = join_words([f"{'many' if c in crowds else number(n)} {plural(c, 2 if c in crowds else n)}"
                                 for c, n in counts.items()])
            text += f" In total I can see {listed}."
            for category in counts:
                places = sorted({position(o, record) for o in objs if o.category == category})
                one = counts[category] == 1 and category not in crowds
                text += f" The {plural(category, 1 if one else 2)} {'is' if one else 'are'} " \
                        f"at the {join_words(places)}."
        return text
    ordered = sorted(objs, key=lambda o: POSITIONS.index(position(o, record)))
    n = len(objs)
    text = f"The image shows {number(n)} {plural('shape', n)} on a light background."
    for obj in ordered:
        text += f" At the {position(obj, record)} there is {a(describe(obj))}."
    colors = Counter(o.color for o in objs)
    if n > 1:
        text += f" The colors are {join_words(list(colors))}."
    return text


def reasoning_question(record: ImageRecord, rng: random.Random) -> QA:
    """A question that needs counting after a hypothetical change, or comparing two groups."""
    objs = record.objects
    n = len(objs)
    has_attrs = bool(objs) and all(o.color for o in objs)
    if has_attrs or not objs:
        listed = join_words([a(describe(o)) for o in objs]) if objs else "nothing"
    else:  # COCO: dozens of boxes read as counts per category ("ten people and two cars"), not one by one
        per_category = Counter(o.category for o in objs)
        listed = join_words([count_phrase(c, k, one="a") for c, k in per_category.items()])
    crowds = crowded(record)
    options = (["add"] if crowds else ["remove", "add"]) + (["compare", "repaint"] if has_attrs else [])
    kind = rng.choice(options) if objs else "add"
    if kind == "remove":
        gone = rng.choice(objs)
        left = n - 1
        # COCO: "the car" names nothing when there are ten (the embedded scenes keep their wording)
        several = not has_attrs and sum(name(o) == name(gone) for o in objs) > 1
        the = f"one of the {plural(name(gone))}" if several else f"the {name(gone)}"
        return QA(f"If {the} were taken away, how many objects would be left?",
                  f"The image has {number(n)} {plural('object', n)}: {listed}. Taking away {the} "
                  f"leaves {number(left)} {plural('object', left)}.", "reasoning", number(left))
    if kind == "add":
        countable = [o.category for o in objs if o.category not in crowds] or \
            [next(c for c in ("dog", "cat") if c not in crowds)]  # only crowds: ask about an absent category
        if not objs:  # a COCO image without boxes (every scene has shapes): none of COCO's categories is boxed
            countable = ["person"]
        category = rng.choice(list(SHAPES) if has_attrs else countable)
        k = sum(o.category == category for o in objs)
        return QA(f"If one more {category} were added, how many {plural(category)} would there be?",
                  f"Right now there {'is' if k == 1 else 'are'} {number(k)} {plural(category, k)}. "
                  f"Adding one more makes {number(k + 1)} {plural(category, k + 1)}.", "reasoning", number(k + 1))
    if kind == "compare":
        c1 = rng.choice(sorted({o.color for o in objs}))
        c2 = rng.choice([c for c in COLORS if c != c1])
        if rng.random() < 0.5:  # the present colour comes first only half the time, so "yes" is not a cue
            c1, c2 = c2, c1
        k1, k2 = (sum(o.color == c for o in objs) for c in (c1, c2))
        verdict = "Yes" if k1 > k2 else "No"
        detail = "more" if k1 > k2 else "the same number of" if k1 == k2 else "fewer"
        return QA(f"Are there more {c1} shapes than {c2} shapes?",
                  f"{verdict}. There {'is' if k1 == 1 else 'are'} {number(k1)} {c1} {plural('shape', k1)} and "
                  f"{number(k2)} {c2} {plural('shape', k2)}, so there are {detail} {c1} shapes.", "reasoning",
                  verdict.lower())
    # repaint: every object of one category turns one colour
    category = rng.choice([o.category for o in objs])
    color = rng.choice(list(COLORS))
    total = sum(o.category == category or o.color == color for o in objs)
    return QA(f"If every {category} were painted {color}, how many {color} shapes would there be?",
              f"The {color} shapes would be the {plural(category)} plus the shapes that are already {color}. "
              f"That makes {number(total)} {color} {plural('shape', total)}.", "reasoning", number(total))


def rule_instructions(record: ImageRecord, response_type: str, rng: random.Random, max_turns: int = MAX_TURNS,
                      occupied: float = 0.0, worked: bool = True, binding_first: bool = False,
                      worked_what_at: bool = False) -> list[tuple[str, str]]:
    """(question, answer) turns of one sample of ``response_type`` for ``record`` (``occupied``, ``worked``,
    ``worked_what_at``: ``scene_questions``). ``binding_first``: a conversation asks the questions that
    ``needs_binding`` before the others, so it always includes them."""
    if response_type == "conv":
        qas = scene_questions(record, rng, occupied, worked, worked_what_at)
        if binding_first:
            qas.sort(key=lambda qa: not needs_binding(qa, record))  # stable: each group keeps its shuffled order
        return [(q.question, q.answer) for q in qas[:rng.randint(min(2, len(qas)), min(max_turns, len(qas)))]]
    if response_type == "detail":
        return [(rng.choice(DETAIL_PROMPTS), describe_scene(record))]
    if response_type == "complex":
        qa = reasoning_question(record, rng)
        return [(qa.question, qa.answer)]
    raise ValueError(f"unknown response type {response_type!r}; expected conv, detail or complex")


def teacher_options(cfg) -> dict:
    """A Config's ``teacher_*`` fields as the keyword arguments of ``generate_rule_instructions`` and
    ``instructions_file``."""
    return {"occupied": cfg.teacher_occupied, "worked": cfg.teacher_worked_relations,
            "max_turns": cfg.teacher_max_turns, "binding_first": cfg.teacher_binding_first,
            "worked_what_at": cfg.teacher_worked_what_at}


def instructions_file(data_dir, split: str, *, occupied: float = 0.0, worked: bool = True,
                      max_turns: int = MAX_TURNS, binding_first: bool = False, worked_what_at: bool = False) -> Path:
    """Where the quickstart keeps the rule teacher's instructions for ``split``: ``instruct_{split}.json``, or made
    with other settings (``rule_instructions``) a file of their own, so data made one way is never read as
    another's."""
    variant = (f"_occupied{occupied:g}" if occupied else "") + ("" if worked else "_plain") + \
        (f"_turns{max_turns}" if max_turns != MAX_TURNS else "") + ("_binding" if binding_first else "") + \
        ("_workedat" if worked_what_at else "")
    return Path(data_dir) / f"instruct_{split}{variant}.json"


def generate_rule_instructions(records: list[ImageRecord], types=("conv", "detail", "complex"),
                               seed: int = 0, occupied: float = 0.0, worked: bool = True,
                               max_turns: int = MAX_TURNS, binding_first: bool = False,
                               worked_what_at: bool = False) -> list[dict]:
    """LLaVA-format samples, one per (image, type); deterministic per seed and per image (the teacher's settings:
    ``rule_instructions``)."""
    samples = []
    for record in records:
        for response_type in types:
            rng = random.Random(f"{seed}:{record.image_id}:{response_type}")
            turns = rule_instructions(record, response_type, rng, max_turns, occupied=occupied, worked=worked,
                                      binding_first=binding_first, worked_what_at=worked_what_at)
            samples.append(make_sample(f"{record.image_id}_{response_type}", record.file_name, turns, response_type))
    return samples


# the words each kind of short key answer is drawn from: what exact-match scoring and the rule judge look for
KEY_WORDS = {
    "color": set(COLORS), "shape": set(SHAPES) | {"nothing"}, "size": {"large", "small"},
    "count": {"no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"},
    "position": set(POSITIONS), "exists": {"yes", "no"}, "reasoning": None,
    "relation": ("above", "below", "to the left of", "to the right of"),  # in the order relation() writes them
}


def positions_in(words: str) -> set[str]:
    """Position phrases in ``words``, longest first, so "bottom center" is not also read as "center"."""
    found = set()
    for phrase in sorted(POSITIONS, key=len, reverse=True):
        if f" {phrase} " in words:
            found.add(phrase)
            words = words.replace(f" {phrase} ", " | ")
    return found


def _normalise(text: str) -> str:
    """Lower case, punctuation dropped, one space between words and one at each end (for whole-word matches)."""
    return " " + " ".join(text.lower().replace(".", " ").replace(",", " ").replace("?", " ").split()) + " "


def conclusion(text: str) -> str:
    """The answer a worked answer comes to: what follows its last ", so " ("At the top center there is a red
    circle, so at the top left there is nothing." → "at the top left there is nothing."); else all of ``text``."""
    return text.rsplit(", so ", 1)[-1]


def stated_answer(kind: str, text: str) -> str:
    """What ``text`` answers, in the key's vocabulary: 'large', 'top left', 'above and to the left of';
    '' when it names no candidate, several joined by ' | ' when it names more than one.

    Used to see *what* a model says, right or wrong: a model that answers 'large' to every size question has
    learned the answer's form, not to look (``eval.accuracy.answer_habits``). Reasoning answers have no fixed
    vocabulary and give ''. A worked answer is read from its ``conclusion``.
    """
    words = _normalise(conclusion(text))
    if kind == "position":
        return " | ".join(sorted(positions_in(words)))
    if kind == "relation":  # directions in the order the teacher writes them: vertical, then horizontal
        found = [r for r in KEY_WORDS["relation"] if f" {r} " in words]
        return " and ".join(found) if len(found) <= 2 else " | ".join(found)
    candidates = KEY_WORDS.get(kind) or set()
    return " | ".join(sorted(c for c in candidates if f" {c} " in words))


def answer_is_correct(qa: QA, text: str) -> bool:
    """Exact-match scoring: the answer names the key and no other candidate of the same kind.

    "The circle is red." is right for key "red"; "It is red or blue." is wrong. Positions match as whole
    phrases, longest first ("bottom center" is not also "center"); relations must name exactly the key's
    directions; a worked answer (its lookups first, then ", so " and the answer) is judged by its ``conclusion``;
    a "how many" reasoning answer is judged by its last number word, a yes/no one by its first word.
    """
    candidates = KEY_WORDS.get(qa.kind)
    words = _normalise(text if candidates is None else conclusion(text))
    if qa.kind == "position":
        return positions_in(words) == {qa.key}
    if qa.kind == "relation":
        found = {r for r in KEY_WORDS["relation"] if f" {r} " in words}
        return found == {r for r in KEY_WORDS["relation"] if r in qa.key}
    if candidates is None:  # reasoning: a number comes last (after the steps), a yes/no verdict comes first
        tokens = words.split()
        if "how many" in qa.question.lower():
            numbers = [t for t in tokens if t in KEY_WORDS["count"]]
            return bool(numbers) and numbers[-1] == qa.key
        return bool(tokens) and tokens[0] == qa.key
    found = {c for c in candidates if f" {c} " in words}
    if qa.kind == "count" and qa.key == "no":
        return found <= {"no"} and "no" in found
    return found == {qa.key}
