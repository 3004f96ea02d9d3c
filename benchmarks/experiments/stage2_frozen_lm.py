"""The quickstart with the chat LM frozen in stage 2 too: only W learns, on the instruction data (issue 25).

`what_at_tokens.py` shows the shipped chat LM telling an occupied cell from an empty one when it reads cell words
(p(object) 0.474 against 0.027) and losing that in stage 2 on images (0.186 against 0.051, from the same cell words).
Here the LM keeps it: `model.freeze.STAGES[2]` is set so stage 2 trains W alone, as stage 1 does (a departure from
§4.2, which tunes W and the LM end to end, for this trial only). Does W alone then make the image read like cell words?
Usage: python benchmarks/experiments/stage2_frozen_lm.py RUN [key=value ...]
"""
import sys

import minillava.model.freeze as freeze
from minillava.quickstart import run_quickstart

freeze.STAGES[2] = dict(train_lm=False)
metrics = run_quickstart(sys.argv[1], overrides=sys.argv[2:], progress=False)
print(metrics["accuracy"])
