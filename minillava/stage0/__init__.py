"""Stage 0 (tiny preset only): make the "released checkpoints" that LLaVA takes for granted (§4.1).

LLaVA starts from CLIP ViT-L/14 (contrastive pretraining on 400M image–text pairs) and Vicuna (an instruction-
tuned LLaMA). Offline on a CPU we have neither, so this recipe trains stand-ins on the embedded scenes, one module
per part:

- ``tower``   a tiny CLIP (vision + text towers, symmetric contrastive loss) with hard-negative twins and a fixed
              2-D position code (recipe version 10);
- ``probes``  its check: linear probes on the frozen patch features (colour, shape, size, occupancy, cell);
- ``drill``   the chat LM's first lessons (recipe version 8): colour, position, relation on busy scenes, in cell words;
- ``lm``      a tiny chat LM on text only, in the stage-2 template, answering about a scene *described in words*
              (phase 1), then drilled on the kinds phase 1 leaves at the majority answer (phase 2, focus);
- ``vocab``   phase 3: the scene as nine *cell words*, the text twin of the tower's nine patch tokens;
- ``binding`` phase 4 (recipe version 12): questions that only colour and shape together answer;
- ``review``  (version 11; after binding since version 13): the forms the LM reads weakest, asked more often;
- ``relations`` the last phase (version 14): relation questions answered with both cells first;
- ``recipe``  the settings and their versioned hash, ``run_stage0`` and ``add_lm_phase``.
"""

from .binding import binding_chat_lm, binding_questions, binding_sample
from .drill import colour_lookup_accuracy, drill_chat_lm, drill_sample, drill_scenes
from .lm import FOCUS_KINDS, fit_lm, focus_chat_lm, focus_sample, scene_in_words, text_qa_accuracy, text_sample
from .probes import probe_features
from .recipe import (RECIPE_VERSIONS, Stage0Config, add_lm_phase, corpus, lm_phases, recipe_scenes, run_stage0,
                     shipped_file_hashes, text_qa_report)
from .relations import relation_sample, relations_chat_lm
from .review import REVIEW_FORMS, review_chat_lm, review_sample
from .tower import CLIP_MEAN, CLIP_STD, grid_position_code, to_pixels, train_clip, twin
from .vocab import (EMPTY_CELL, WHATS, add_cell_words, cell_word, cell_words, cell_words_chat_lm, in_cell_words,
                    scene_in_cell_words)

__all__ = ["CLIP_MEAN", "CLIP_STD", "EMPTY_CELL", "FOCUS_KINDS", "RECIPE_VERSIONS", "REVIEW_FORMS", "WHATS",
           "Stage0Config",
           "add_cell_words", "add_lm_phase", "binding_chat_lm", "binding_questions", "binding_sample", "cell_word",
           "cell_words", "cell_words_chat_lm", "colour_lookup_accuracy", "corpus",
           "drill_chat_lm", "drill_sample", "drill_scenes", "fit_lm", "grid_position_code",
           "focus_chat_lm", "focus_sample", "in_cell_words", "lm_phases", "probe_features", "recipe_scenes",
           "relation_sample", "relations_chat_lm", "review_chat_lm",
           "review_sample", "run_stage0",
           "scene_in_cell_words", "scene_in_words", "shipped_file_hashes", "text_qa_accuracy", "text_qa_report",
           "text_sample", "to_pixels", "train_clip", "twin"]
