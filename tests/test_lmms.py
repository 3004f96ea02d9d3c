"""lmms-eval's own llava_hf model answers a request from an exported minillava model (CPU, offline).

lmms-eval is an optional extra (``pip install 'minillava[lmms]'``); without it this test skips and says why.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_random_model
from minillava.eval.lmms import check_lmms, lmms_model_args, load_lmms_llava
from test_export import _save_as_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lmms():
    try:
        check_lmms()
    except ImportError as e:
        pytest.skip(f"lmms-eval route not testable here: {e}")


def test_model_args_name_the_device_map_transformers_5_needs(tmp_path):
    assert lmms_model_args(tmp_path / "hf") == f"pretrained={tmp_path / 'hf'},device=cpu,device_map=cpu,dtype=float32"


def test_lmms_eval_llava_hf_answers_like_minillava(lmms, tmp_path):
    from lmms_eval.api.instance import Instance

    from minillava.data.shapes import generate_split
    from minillava.inference import answer_batch
    from minillava.model.build import load_model
    from minillava.model.export import export_model

    source = make_random_model(seed=2).eval()
    with torch.no_grad():  # a trained-looking projector, not the seed's default init
        source.projector[2].weight.mul_(3.0)
    model_dir = _save_as_model_dir(source, tmp_path)
    hf_dir = export_model(model_dir, tmp_path / "hf")

    harness = load_lmms_llava(hf_dir, device="cpu")
    image = generate_split(1, "val", seed=1, size_px=96)[0][2]
    question = "What color is the circle?"
    # a request as lmms-eval's evaluator builds one for a generate_until task: (context, generation kwargs,
    # doc_to_visual, doc_id, task, split); the model looks the document up in its task_dict
    harness.task_dict = {"minillava_test": {"test": {0: {"image": image}}}}
    request = Instance(request_type="generate_until", idx=0,
                       arguments=(question, {"max_new_tokens": 10, "temperature": 0, "until": ["</s>"]},
                                  lambda doc: [doc["image"]], 0, "minillava_test", "test"),
                       metadata={"task": "minillava_test", "doc_id": 0, "repeats": 1})
    (theirs,) = harness.generate_until([request])

    model, image_processor, _ = load_model(model_dir)
    pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"]
    (ours,) = answer_batch(model, [question], pixel_values=pixels, max_new_tokens=10)
    assert ours  # something was generated (lmms-eval answers "" when generation fails)
    assert theirs.strip() == ours
