"""Where a worked relation answer goes wrong: the two cells it names, or the comparison after them.

A quickstart trained with ``teacher_worked_relations=true`` answers "Where is the A relative to the B?" with
"The A is at the {cell} and the B is at the {cell}, so the A is {relation} the B." This reads each answer of the
run's ``answers.jsonl`` (held-out test scenes) and counts, against the scene's ground truth, how many of the two
cells it names are right and whether the relation it states follows from the cells it named.
Usage: python benchmarks/experiments/worked_relation_steps.py RUN_DIR
"""
import json
import re
import sys
from collections import Counter

from minillava.data.grid import POSITIONS, relation
from minillava.data.records import load_split
from minillava.data.teachers import name, position

run = sys.argv[1]
scenes = {r.file_name: r for r in load_split(f"{run}/data", "test")}
answers = [json.loads(line) for line in open(f"{run}/answers.jsonl")]
counts = Counter()
for a in (a for a in answers if a["kind"] == "relation"):
    record = scenes[a["image"]]
    cell = {name(o): position(o, record) for o in record.objects}
    first, second = re.match(r"Where is the (\w+ \w+) relative to the (\w+ \w+)\?", a["question"]).groups()
    worked = re.match(r"The \w+ \w+ is at the ([\w ]+?) and the \w+ \w+ is at the ([\w ]+?), so the .* is (.*) the "
                      r"\w+ \w+\.?$", a["answer"])
    if not worked:
        counts["not a worked answer", "right" if a["correct"] else "wrong"] += 1
        continue
    said_a, said_b, said_rel = worked.groups()
    follows = said_a in POSITIONS and said_b in POSITIONS and said_a != said_b and \
        relation(POSITIONS.index(said_a), POSITIONS.index(said_b)) == said_rel
    counts[f"{(said_a == cell[first]) + (said_b == cell[second])} of 2 cells right",
           "relation follows from them" if follows else "relation does not follow",
           "right" if a["correct"] else "wrong"] += 1
n = sum(counts.values())
for key, k in sorted(counts.items(), key=str):
    print(f"{' / '.join(key)}: {k} of {n}")
