"""Shared fixtures: a random-weight tiny LLaVA and a small scene set, built in seconds without shipped assets."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")


def make_random_model(projector: str = "mlp2x_gelu", select_layer: int = -2, seed: int = 0, image_size: int = 96):
    """A MiniLlava with random tiny backbones and a BPE tokenizer trained on a few scene texts."""
    import random

    from transformers import CLIPVisionModel, LlamaForCausalLM

    from minillava.data.shapes import generate_split
    from minillava.model import MiniLlava
    from minillava.model.backbones import tiny_lm_config, tiny_vision_config, train_tiny_tokenizer
    from minillava.stage0 import corpus

    torch.manual_seed(seed)
    scenes = generate_split(60, "train", seed=5, size_px=image_size)
    tokenizer = train_tiny_tokenizer(corpus(scenes), vocab_size=400)
    vision = CLIPVisionModel(tiny_vision_config(image_size)).eval()
    lm = LlamaForCausalLM(tiny_lm_config(len(tokenizer), tokenizer))
    random.seed(seed)
    return MiniLlava(vision, lm, tokenizer, projector=projector, select_layer=select_layer)


@pytest.fixture(scope="session")
def random_model():
    return make_random_model()


def save_backbones(model, root):
    """Write a model's vision tower (+ 96 px CLIP processor) and LM (+ tokenizer) as local hub-style directories."""
    from minillava.model.backbones import image_processor_class
    from minillava.stage0 import CLIP_MEAN, CLIP_STD

    size = model.vision.config.image_size
    model.vision.save_pretrained(root / "vision")
    image_processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                            image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(root / "vision")
    model.lm.save_pretrained(root / "lm")
    model.tokenizer.save_pretrained(root / "lm")
    return root / "vision", root / "lm"


@pytest.fixture(scope="session")
def backbone_dirs(tmp_path_factory, random_model):
    return save_backbones(random_model, tmp_path_factory.mktemp("backbones"))


def make_scene_dir(root, images: int):
    """``images`` embedded scenes in ``root`` with rule-teacher instructions for the train split."""
    from minillava.data.llava_json import write_llava_json
    from minillava.data.records import load_split
    from minillava.data.shapes import write_shapes_dataset
    from minillava.data.teachers import generate_rule_instructions

    write_shapes_dataset(root, images, seed=0)
    write_llava_json(root / "instruct_train.json", generate_rule_instructions(load_split(root, "train")))
    return root


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory):
    """60 embedded scenes with rule-teacher instructions for the train split."""
    return make_scene_dir(tmp_path_factory.mktemp("scenes"), 60)


@pytest.fixture(scope="module")
def one_thread():
    """The models are tiny: one intra-op thread is as fast, and much faster on a machine that is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny_cfg(backbone_dirs, scene_dir):
    """A tiny Config on the random backbones and the 60-scene set; tests override what they need.

    Random backbones have no cell words, so stage 1 is the paper's alone (no ``align`` fit).
    """
    from minillava.config import load_config

    def make(**overrides):
        values = dict(vision_name=str(backbone_dirs[0]), lm_name=str(backbone_dirs[1]), data_dir=str(scene_dir),
                      stage1_steps=4, stage2_steps=6, stage1_batch=8, stage2_batch=8, save_every=3, log_every=1,
                      stage1_cell_word_steps=0)
        values.update(overrides)
        return load_config("tiny", values)
    return make
