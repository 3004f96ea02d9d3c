"""Guard: no notebook output that nbval compares depends on trained weights.

What training produces differs in its last digits between CPUs (AVX2 vs AVX-512 kernels; see README, "Testing"),
so a recorded accuracy, loss or generated answer compared by nbval passes on one machine and fails on the next.
Such a cell must carry ``# NBVAL_IGNORE_OUTPUT`` and be followed (in the same or the next code cell) by an
``assert`` of the property its text claims.

A cell's output is taken to depend on training when its code reads a name bound, directly or through other names,
to something training produced: what ``cached_quickstart`` / ``run_quickstart`` return, a model from
``load_model`` / ``run_stage`` / ``train_stage``, a linear probe's fit. The analysis is deliberately simple (names,
not values); the few cells it over-flags because they print only structure are listed in ``STRUCTURAL`` with why.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
IGNORE = "NBVAL_IGNORE_OUTPUT"

# function -> which assignment targets it taints ("all" or the index of the one trained value it returns)
SOURCES = {"cached_quickstart": "all", "run_quickstart": "all", "run_stage": "all", "train_stage": "all",
           "load_model": 0, "probe_features": "all"}
# reading these keys of a trained result gives a path or a setting, not a trained number
UNTAINTED_KEYS = {"out_dir", "model", "preset", "seed", "parameters"}
# nor these attributes of a trained model: its architecture and vocabulary
UNTAINTED_CALLS = {"n_params"}
UNTAINTED_ATTRS = {"config", "tokenizer", "num_image_tokens", "image_token_id", "select_layer", "keep_cls"}

# (notebook, a line of the cell) -> why its output does not depend on training, although its code reads a trained
# object
STRUCTURAL = {
    ("04_stage1_alignment", 'print("quickstart model ready:"'): "directory names only",
    ("09_evaluation", 'print(len(rows), "answers written; fields:", list(rows[0]))'): "a count and field names",
    ("09_evaluation", 'print("judged:", len(result["per_question"]), "questions; failed:", result["failed"])'):
        "a count, and the list of failed questions, which a rule judge leaves empty",
    ("08_projector", 'print("objects checked:", rates["after stage 2"]["n_objects"])'):
        "the number of objects in the scenes measured, fixed by the data",
    ("07_attention", 'print("attn shape (L, H, A, N):", tuple(result["attn"].shape))'):
        "the question is built from the scene; the shape's answer-token count is asserted below",
}


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


class _Taint:
    """Which names in a notebook hold something training produced, statement by statement across cells."""

    def __init__(self):
        self.tainted: set[str] = set()
        self.prints_trained = False   # set by run(): an expression statement in the cell read a trained name

    def reads_trained(self, node: ast.AST, tainted: set[str] | None = None) -> bool:
        tainted = self.tainted if tainted is None else tainted
        # comprehension variables are local to their comprehension: trained only if what they loop over is
        comps = [c for c in ast.walk(node) if isinstance(c, ast.comprehension)]
        local = set(tainted) - {n.id for c in comps for n in ast.walk(c.target) if isinstance(n, ast.Name)}
        for _ in range(2):
            for c in comps:
                if self._reads(c.iter, local):
                    local |= {n.id for n in ast.walk(c.target) if isinstance(n, ast.Name)}
        return self._reads(node, local)

    @staticmethod
    def _reads(node: ast.AST, tainted: set[str]) -> bool:
        parents = {child: parent for parent in ast.walk(node) for child in ast.iter_child_nodes(parent)}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and _call_name(sub) in SOURCES:
                return True
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id in tainted:
                up = parents.get(sub)
                if isinstance(up, ast.Subscript) and up.value is sub and isinstance(up.slice, ast.Constant) \
                        and up.slice.value in UNTAINTED_KEYS:
                    continue   # metrics["out_dir"]: a path, not a trained number
                chain = []
                while isinstance(up, ast.Attribute):
                    chain.append(up.attr)
                    up = parents.get(up)
                if UNTAINTED_ATTRS & set(chain):
                    continue   # model.vision.config: the architecture, not its weights
                if isinstance(up, ast.Call) and _call_name(up) in UNTAINTED_CALLS:
                    continue   # n_params(model): a count fixed by the architecture
                return True
        return False

    def bind(self, target: ast.AST, trained: bool, value: ast.AST | None = None):
        names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        if trained and isinstance(value, ast.Call) and isinstance(target, ast.Tuple) \
                and SOURCES.get(_call_name(value), "all") != "all":
            keep = {n.id for n in ast.walk(target.elts[SOURCES[_call_name(value)]]) if isinstance(n, ast.Name)}
            self.tainted -= names - keep
            names = keep
        if trained:
            self.tainted |= names
        else:
            self.tainted -= names

    def run(self, body: list[ast.stmt]):
        for node in body:
            if isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant):
                self.prints_trained |= self.reads_trained(node.value)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                trained = node.value is not None and self.reads_trained(node.value)
                if isinstance(node, ast.AugAssign):
                    trained = trained or self.reads_trained(ast.Name(node.target.id, ast.Load())) \
                        if isinstance(node.target, ast.Name) else trained
                for t in targets:
                    self.bind(t, trained, node.value)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                self.bind(node.target, self.reads_trained(node.iter))
                self.run(node.body); self.run(node.orelse)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        self.bind(item.optional_vars, self.reads_trained(item.context_expr))
                self.run(node.body)
            elif isinstance(node, (ast.If, ast.While)):
                self.run(node.body); self.run(node.orelse)
            elif isinstance(node, ast.Try):
                self.run(node.body); self.run(node.orelse); self.run(node.finalbody)
                for handler in node.handlers:
                    self.run(handler.body)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = {a.arg for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs}
                reads = any(self.reads_trained(stmt, self.tainted - params) for stmt in node.body)
                self.bind(ast.Name(node.name, ast.Store()), reads)


def _source(cell) -> str:
    return "".join(cell["source"])


def _parse(src: str) -> ast.AST:
    return ast.parse("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))


def _text_output(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append("".join(o["text"]))
        elif "data" in o and not any(k.startswith("image/") for k in o["data"]):
            out.append("".join(o["data"].get("text/plain", "")) + "".join(o["data"].get("text/markdown", "")))
        elif o.get("output_type") == "error":
            out.append(o.get("ename", "error"))
    return "".join(out).strip()


def _has_assert(src: str) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(_parse(src)))


def flagged_cells(path: Path) -> list[str]:
    """Cells whose compared output reads a trained object, or whose ignored output has no assertion after it."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    taint = _Taint()
    problems = []
    for i, cell in enumerate(cells):
        src = _source(cell)
        taint.prints_trained = False
        taint.run(_parse(src).body)
        ignored = IGNORE in src
        reads = taint.prints_trained
        structural = any(nb == path.stem and line in src for nb, line in STRUCTURAL)
        if reads and _text_output(cell) and not ignored and not structural:
            problems.append(f"{path.name} code cell {i}: prints what training produced but nbval compares it "
                            f"(add '# {IGNORE}' and assert the property): {src.splitlines()[0][:80]!r}")
        if ignored and _text_output(cell):
            following = _source(cells[i + 1]) if i + 1 < len(cells) else ""
            if not (_has_assert(src) or _has_assert(following)):
                problems.append(f"{path.name} code cell {i}: output ignored by nbval with no assertion in this "
                                f"cell or the next: {src.splitlines()[0][:80]!r}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_compared_output_depends_on_training(path):
    problems = flagged_cells(path)
    assert not problems, "\n".join(problems)


def test_guard_flags_a_trained_figure_without_marker(tmp_path):
    def cell(src, out):
        return {"cell_type": "code", "source": src, "metadata": {}, "execution_count": 1,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": out}]}
    nb = {"cells": [cell("metrics = cached_quickstart()\nrun = Path(metrics['out_dir'])", ""),
                    cell("print(sorted(p.name for p in run.iterdir()))", "['stage1']\n"),
                    cell("acc = metrics['accuracy']\nprint(acc['all'])", "0.717\n"),
                    cell("# NBVAL_IGNORE_OUTPUT\nprint(acc['color'])", "0.57\n"),
                    cell("print('done')", "done\n")],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "guard_demo.ipynb"
    path.write_text(json.dumps(nb))
    problems = flagged_cells(path)
    assert len(problems) == 2, problems
    assert "code cell 2" in problems[0] and "nbval compares it" in problems[0]
    assert "code cell 3" in problems[1] and "no assertion" in problems[1]
