"""Where a worked "What is at" answer goes wrong: the objects and cells it lists, or the conclusion after them.

A quickstart trained with ``teacher_worked_what_at=true`` answers "What is at the {cell}?" with "At the top center
there is a large red circle and at the bottom left there is a small blue square, so at the top left there is nothing."
(``data.teachers.what_is_at``; an earlier form, not kept, put the object first: "There is a large red circle at the
top center and ..., so there is nothing at the top left."). This reads each such answer of the run's ``answers.jsonl``
(held-out test scenes) and counts, against the scene's ground truth, whether the list names every object in its own
cell and nothing else, and whether the conclusion follows from the list (what the list puts at the asked cell, or
"nothing").
Usage: python benchmarks/experiments/worked_what_at_steps.py RUN_DIR
"""
import json
import re
import sys
from collections import Counter

from minillava.data.grid import POSITIONS
from minillava.data.records import load_split
from minillava.data.teachers import describe, position, stated_answer

CELLS = "|".join(sorted(POSITIONS, key=len, reverse=True))
CELL_FIRST = re.compile(rf"at the ({CELLS}) there is an? ((?:\w+ )?\w+ \w+)", re.IGNORECASE)
OBJECT_FIRST = re.compile(rf"an? ((?:\w+ )?\w+ \w+) at the ({CELLS})\b")  # "There is a … at the …, so there is …"

run = sys.argv[1]
scenes = {r.file_name: r for r in load_split(f"{run}/data", "test")}
answers = [json.loads(line) for line in open(f"{run}/answers.jsonl")]
counts = Counter()
for a in (a for a in answers if a["question"].startswith("What is at")):
    record = scenes[a["image"]]
    asked = re.match(r"What is at the ([\w ]+)\?", a["question"]).group(1)
    occupied = "occupied" if a["key"] != "nothing" else "empty"
    if ", so " not in a["answer"]:
        counts[occupied, "not a worked answer", "right" if a["correct"] else "wrong"] += 1
        continue
    steps = a["answer"].rsplit(", so ", 1)[0]
    if steps.startswith("At the"):
        listed = {(what, cell.lower()) for cell, what in CELL_FIRST.findall(steps)}
    else:
        listed = set(OBJECT_FIRST.findall(steps))
    truth = {(describe(o), position(o, record)) for o in record.objects}
    at_asked = [what.split()[-1] for what, cell in listed if cell == asked]
    follows = stated_answer("shape", a["answer"]) == (at_asked[0] if len(at_asked) == 1 else "nothing" if not at_asked
                                                      else "several")
    counts[occupied, "list right" if listed == truth else "list wrong",
           "conclusion follows" if follows else "conclusion does not follow", "right" if a["correct"] else "wrong"] += 1
    if "--show" in sys.argv and listed != truth:
        print(sorted(truth), "|", a["answer"])
n = sum(counts.values())
for key, k in sorted(counts.items(), key=str):
    print(f"{' / '.join(key)}: {k} of {n}")
