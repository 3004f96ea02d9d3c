"""Nothing trusted: a corpus of bad inputs, each answered by a one-line error naming the file, the record and the
field — or, where the input is odd but usable (grayscale, RGBA, 16-bit, 1-pixel images ...), by a clean load,
or by a counted skip or a counted truncation where the user allows it. Never a traceback from inside torch or PIL,
never a silent drop.

Every bad file is generated here (``Case.run`` gets a fresh ``tmp_path``), so nothing binary is committed.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from minillava.config import ConfigError, load_config
from minillava.conversation import get_template, tokenize_conversation
from minillava.data.dataset import InstructDataset, load_image
from minillava.data.llava_json import read_llava_json
from minillava.data.records import DataError, load_split, verify_image


@dataclass
class Case:
    name: str
    run: Callable[[Path, dict], object]   # raises, or returns what a "skip" / "ok" case checks
    error: type | None = DataError         # None: must load cleanly
    needles: tuple[str, ...] = ()          # must all appear in the one-line message (or in the skip reasons)
    check: Callable[[object], bool] | None = None


# --- builders --------------------------------------------------------------------------------------------------

def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG written by hand, so the header can claim anything (huge sizes, 16-bit colour)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def scene_image(size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def image_case(name: str, data: bytes | Callable[[], bytes] | None, *needles: str, ok: bool = False) -> Case:
    """An image file through the loader training and inference use (and through the CLIP processor when ok)."""
    filename = f"{name}.{'jpg' if 'jpeg' in name or 'cmyk' in name else 'tif' if 'tiff' in name else 'png'}"

    def run(tmp: Path, ctx: dict):
        path = tmp / filename
        if data is not None:
            path.write_bytes(data() if callable(data) else data)
        image = load_image(path)
        pixels = ctx["processor"](images=[image], return_tensors="pt")["pixel_values"]
        verify_image(path)
        return image, pixels

    if ok:
        return Case(f"image-{name}", run, None, check=lambda r: r[0].mode == "RGB" and tuple(r[1].shape) == (1, 3, 96, 96))
    return Case(f"image-{name}", run, DataError, (filename, *needles))


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bad_png_crc() -> bytes:
    data = bytearray(encoded(scene_image(), "PNG"))
    data[-20] ^= 0xFF  # inside the last IDAT's payload or CRC
    return bytes(data)


def garbage_jpeg() -> bytes:
    data = encoded(scene_image(), "JPEG")
    return data[:20] + bytes(range(256)) * 8


IMAGE_CASES = [
    image_case("truncated-jpeg", lambda: truncated(encoded(scene_image(), "JPEG")), "cannot decode"),
    image_case("truncated-png", lambda: truncated(encoded(scene_image(), "PNG")), "cannot decode"),
    image_case("corrupt-jpeg", garbage_jpeg, "cannot decode"),
    image_case("corrupt-png-crc", bad_png_crc, "cannot decode"),
    image_case("zero-bytes", b"", "cannot decode"),
    image_case("text-named-png", b"this is not a picture\n", "cannot decode"),
    image_case("missing", None, "not found"),
    image_case("decompression-bomb", png_bytes(30_000, 30_000, 1, 0, b"\x00"), "cannot decode", "DecompressionBomb"),
    image_case("header-bigger-than-data", png_bytes(4000, 4000, 8, 0, b"\x00" * 100), "cannot decode"),
    image_case("grayscale", lambda: encoded(scene_image().convert("L"), "PNG"), ok=True),
    image_case("rgba", lambda: encoded(scene_image().convert("RGBA"), "PNG"), ok=True),
    image_case("gray-alpha", lambda: encoded(scene_image().convert("LA"), "PNG"), ok=True),
    image_case("palette", lambda: encoded(scene_image().convert("P"), "PNG"), ok=True),
    image_case("one-bit", lambda: encoded(scene_image().convert("1"), "PNG"), ok=True),
    image_case("gray-16bit", lambda: encoded(Image.fromarray(np.full((30, 40), 60_000, np.uint16)), "PNG"), ok=True),
    image_case("rgb-16bit", png_bytes(3, 2, 16, 2, (b"\x00" + b"\xff\xff\x00\x00\x80\x00" * 3) * 2), ok=True),
    image_case("int32-tiff", lambda: encoded(Image.fromarray(np.full((30, 40), 70_000, np.int32)), "TIFF"), ok=True),
    image_case("float-tiff", lambda: encoded(Image.fromarray(np.full((30, 40), 0.5, np.float32)), "TIFF"), ok=True),
    image_case("cmyk-jpeg", lambda: encoded(scene_image().convert("CMYK"), "JPEG"), ok=True),
    image_case("one-pixel", lambda: encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), ok=True),
    image_case("one-by-300-strip", lambda: encoded(Image.new("RGB", (300, 1), (9, 90, 9)), "PNG"), ok=True),
    image_case("animated-gif", lambda: encoded(Image.new("P", (8, 8)), "GIF", save_all=True,
                                               append_images=[Image.new("P", (8, 8), 3)]), ok=True),
]


def directory_as_image() -> Case:
    def run(tmp: Path, ctx: dict):
        (tmp / "folder.png").mkdir()
        load_image(tmp / "folder.png")
    return Case("image-directory-at-path", run, DataError, ("folder.png", "cannot decode"))


# --- LLaVA JSON / JSONL --------------------------------------------------------------------------------------

def turn(who: str, value) -> dict:
    return {"from": who, "value": value}


GOOD = {"id": "s0", "image": "a.png", "conversations": [turn("human", "<image>\nWhat is it?"), turn("gpt", "A circle.")]}


def llava_case(name: str, content: bytes | str | list, *needles: str, suffix: str = ".json", skip_bad: bool = False,
               ok: bool = False) -> Case:
    filename = f"{name}{suffix}"

    def run(tmp: Path, ctx: dict):
        path = tmp / filename
        if isinstance(content, list):
            text = json.dumps(content) if suffix == ".json" else "\n".join(json.dumps(s) for s in content)
            path.write_text(text, encoding="utf-8")
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        skipped: list[str] = []
        kept = read_llava_json(path, skip_bad=skip_bad, skipped=skipped)
        return kept, skipped

    if ok:
        return Case(f"llava-{name}", run, None, check=lambda r: len(r[0]) == 1)
    if skip_bad:
        return Case(f"llava-{name}", run, "skip", (filename, *needles),
                    check=lambda r: len(r[0]) == 1 and len(r[1]) == 2)
    return Case(f"llava-{name}", run, DataError, (filename, *needles))


def sample(**changes) -> dict:
    s = json.loads(json.dumps(GOOD))
    s.update(changes)
    return s


LLAVA_CASES = [
    llava_case("truncated", json.dumps([GOOD, GOOD])[:70], "invalid JSON", "line 1"),
    llava_case("empty-file", "", "invalid JSON", "line 1"),
    llava_case("latin1", "[{\"id\": \"caf\xe9\"}]".encode("latin-1"), "not UTF-8", "byte"),
    llava_case("object-not-list", json.dumps({"data": [GOOD]}), "expected a JSON list"),
    llava_case("jsonl-bad-line", json.dumps(GOOD) + "\n{oops\n", "line 2", "invalid JSON", suffix=".jsonl"),
    llava_case("jsonl-line-is-list", json.dumps(GOOD) + "\n[1, 2]\n", "record 1", "not an object", suffix=".jsonl"),
    llava_case("sample-is-string", ["just text"], "record 0", "not an object"),
    llava_case("id-missing", [{k: v for k, v in GOOD.items() if k != "id"}], "record 0", "'id'"),
    llava_case("id-bool", [sample(id=True)], "record 0", "'id'"),
    llava_case("image-not-string", [sample(image=["a.png"])], "record 0", "id=s0", "'image'"),
    llava_case("conversations-missing", [{k: v for k, v in GOOD.items() if k != "conversations"}],
               "record 0", "'conversations'"),
    llava_case("empty-conversation", [GOOD, sample(id="s1", conversations=[])], "record 1", "id=s1",
               "'conversations'"),
    llava_case("turn-not-object", [sample(conversations=["<image>\nQ", "A"])], "record 0", "conversations[0]"),
    llava_case("value-null", [sample(conversations=[turn("human", "<image>\nQ"), turn("gpt", None)])],
               "record 0", "conversations[1]", "'value'"),
    llava_case("role-user", [sample(conversations=[turn("user", "<image>\nQ"), turn("gpt", "A")])],
               "record 0", "conversations[0]", "'from'"),
    llava_case("starts-with-gpt", [sample(conversations=[turn("gpt", "<image>\nA"), turn("human", "Q")])],
               "record 0", "'from'"),
    llava_case("unanswered-question", [sample(conversations=[turn("human", "<image>\nQ")])],
               "record 0", "no answer"),
    llava_case("no-image-token", [sample(conversations=[turn("human", "Q"), turn("gpt", "A")])],
               "record 0", "id=s0", "<image>", "found 0"),
    llava_case("two-image-tokens", [sample(conversations=[turn("human", "<image>\n<image>\nQ"), turn("gpt", "A")])],
               "record 0", "<image>", "found 2"),
    llava_case("image-token-in-second-turn", [sample(conversations=[
        turn("human", "Q"), turn("gpt", "A"), turn("human", "<image>\nQ2"), turn("gpt", "A2")])],
        "record 0", "first human turn"),
    llava_case("image-token-without-image", [{k: v for k, v in GOOD.items() if k != "image"}],
               "record 0", "no field 'image'"),
    llava_case("empty-answer", [GOOD, sample(id="e", conversations=[turn("human", "<image>\nQ?"), turn("gpt", "")])],
               "record 1", "id=e", "conversations[1]", "empty answer"),
    llava_case("whitespace-answer", [sample(conversations=[turn("human", "<image>\nQ?"), turn("gpt", " \n ")])],
               "record 0", "conversations[1]", "empty answer"),
    llava_case("skip-bad-counts", [sample(id="bad1", conversations=[]), GOOD,
                                   sample(id="bad2", conversations=[turn("human", "Q"), turn("gpt", "A")])],
               "id=bad1", "id=bad2", skip_bad=True),
    llava_case("utf8-bom", "\ufeff" + json.dumps([GOOD]), ok=True),
]


# --- COCO-format annotations ---------------------------------------------------------------------------------

def coco_case(name: str, file: str, change: Callable[[dict], object] | bytes, *needles: str,
              skip_bad: bool = False, check_images: bool = False) -> Case:
    """Damage one annotation file of a fresh 10-scene set, then ``load_split``."""
    filename = f"{file}_train.json"

    def run(tmp: Path, ctx: dict):
        root = tmp / "scenes"
        shutil.copytree(ctx["scenes"], root)
        path = root / "annotations" / filename
        if isinstance(change, bytes):
            path.write_bytes(change)
        elif change is not None:
            data = json.loads(path.read_text())
            data = change(data) or data
            path.write_text(json.dumps(data))
        skipped: list[str] = []
        kept = load_split(root, "train", skip_bad=skip_bad, skipped=skipped, check_images=check_images)
        return kept, skipped

    if skip_bad:
        return Case(f"coco-{name}", run, "skip", needles, check=lambda r: len(r[1]) == 1 and len(r[0]) == 7)
    return Case(f"coco-{name}", run, DataError, (filename, *needles))


def set_in(path: str, value):
    """A change that sets data[a][i][b] = value for path "a.i.b"."""
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
    return change


def drop_in(path: str):
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]
    return change


def remove_captions_of(image_id: int):
    return lambda d: {**d, "annotations": [a for a in d["annotations"] if a["image_id"] != image_id]}


COCO_CASES = [
    coco_case("truncated-instances", "instances", b'{"images": [{"id": 1, "file_na', "invalid JSON", "line 1"),
    coco_case("instances-is-list", "instances", b"[]", "expected a JSON object"),
    coco_case("captions-latin1", "captions", '{"images": [], "annotations": [], "x": "caf\xe9"}'.encode("latin-1"),
              "not UTF-8"),
    coco_case("images-missing", "instances", drop_in("images"), "'images'", "missing or not a list"),
    coco_case("file-name-missing", "instances", drop_in("images.2.file_name"), "images[2]", "'file_name'"),
    coco_case("width-is-string", "instances", set_in("images.1.width", "96"), "images[1]", "'width'", "wrong type"),
    coco_case("bbox-three-numbers", "instances", set_in("annotations.0.bbox", [1, 2, 3]), "annotations[0]", "'bbox'"),
    coco_case("bbox-negative-width", "instances", set_in("annotations.1.bbox", [1, 2, -3, 4]),
              "annotations[1]", "'bbox'"),
    coco_case("bbox-strings", "instances", set_in("annotations.1.bbox", ["1", "2", "3", "4"]),
              "annotations[1]", "'bbox'"),
    coco_case("unknown-category", "instances", set_in("annotations.0.category_id", 999),
              "annotations[0]", "'category_id'", "999"),
    coco_case("category-without-name", "instances", drop_in("categories.0.name"), "categories[0]", "'name'"),
    coco_case("caption-not-string", "captions", set_in("annotations.3.caption", 42), "annotations[3]", "'caption'"),
    coco_case("caption-unknown-image", "captions", set_in("annotations.0.image_id", 12345),
              "annotations[0]", "unknown image_id 12345"),
    coco_case("image-without-captions", "captions", remove_captions_of(1), "image id=1", "no captions"),
]


def coco_missing_file(name: str, missing: str) -> Case:
    def run(tmp: Path, ctx: dict):
        root = tmp / "scenes"
        shutil.copytree(ctx["scenes"], root)
        (root / "annotations" / missing).unlink()
        load_split(root, "train")
    return Case(f"coco-{name}", run, DataError, (missing, "file not found"))


def coco_bad_image(name: str, damage: Callable[[Path], None], *needles: str, skip_bad: bool) -> Case:
    """A missing or broken picture under ``images/``: an error naming it, or one counted skip."""
    def run(tmp: Path, ctx: dict):
        root = tmp / "scenes"
        shutil.copytree(ctx["scenes"], root)
        damage(root / "images" / "train_000003.png")
        skipped: list[str] = []
        kept = load_split(root, "train", check_images=True, skip_bad=skip_bad, skipped=skipped)
        return kept, skipped
    if skip_bad:
        return Case(f"coco-{name}", run, "skip", ("train_000003.png", *needles),
                    check=lambda r: len(r[1]) == 1 and len(r[0]) == 7)
    return Case(f"coco-{name}", run, DataError, ("train_000003.png", "image id=", *needles))


COCO_CASES += [
    coco_missing_file("captions-file-missing", "captions_train.json"),
    coco_bad_image("image-file-missing", lambda p: p.unlink(), "not found", skip_bad=False),
    coco_bad_image("image-file-missing-skipped", lambda p: p.unlink(), "not found", skip_bad=True),
    coco_bad_image("image-truncated-skipped", lambda p: p.write_bytes(truncated(p.read_bytes())), "cannot decode",
                   skip_bad=True),
    coco_case("bad-annotation-skipped", "instances", set_in("annotations.0.category_id", 999),
              "category_id", skip_bad=True),
]


# --- tokenisation: empty answers, sequences longer than the model allows ------------------------------------

def dataset_case(name: str, samples: list[dict], max_length: int, *needles: str, truncated_count: int | None = None
                 ) -> Case:
    def run(tmp: Path, ctx: dict):
        length = max_length
        if length < 0:  # cut |max_length| tokens after the first <image> token
            ids = tokenize_conversation(samples[0], ctx["tokenizer"], get_template("vicuna_v1"),
                                        image_tokens=9)["input_ids"].tolist()
            length = ids.index(ctx["tokenizer"].convert_tokens_to_ids("<image>")) - max_length
        return InstructDataset(samples, ctx["tokenizer"], get_template("vicuna_v1"), image_tokens=9,
                               max_length=length, source=f"{tmp}/instruct.json")
    if truncated_count is not None:
        return Case(f"tokens-{name}", run, None, check=lambda ds: ds.truncated == truncated_count and len(ds) == 2)
    return Case(f"tokens-{name}", run, DataError, ("instruct.json", *needles))


LONG_ANSWER = " ".join(["The red circle is at the top left of the picture."] * 40)
TOKEN_CASES = [
    dataset_case("longer-than-max-length-is-truncated-and-counted",
                 [GOOD, sample(id="long", conversations=[turn("human", "<image>\nDescribe it."), turn("gpt", LONG_ANSWER)])],
                 200, truncated_count=1),
    dataset_case("truncation-leaves-no-answer",
                 [sample(id="q", conversations=[turn("human", "<image>\n" + LONG_ANSWER), turn("gpt", "Yes.")])],
                 200, "record 0", "id=q", "max_length=200", "nothing of its answer"),
    dataset_case("truncation-cuts-image-tokens",
                 [sample(id="i", conversations=[turn("human", "Hello."), turn("gpt", "Hi."),
                                                turn("human", "<image>\nAnd this?"), turn("gpt", "A circle.")])],
                 -4, "record 0", "id=i", "cuts through the image tokens"),
]


# --- configuration ---------------------------------------------------------------------------------------------

def config_case(name: str, *needles: str, preset: str = "tiny", overrides=None, file: tuple[str, bytes] | None = None,
                build: bool = False) -> Case:
    def run(tmp: Path, ctx: dict):
        path = None
        if file is not None:
            path = tmp / file[0]
            path.write_bytes(file[1])
        cfg = load_config(preset, overrides, path)
        if build:
            from minillava.model.build import build_model
            build_model(cfg)
    return Case(f"config-{name}", run, ConfigError, (*((file[0],) if file else ()), *needles))


CONFIG_CASES = [
    config_case("unknown-preset", "unknown preset", "'huge'", preset="huge"),
    config_case("unknown-template", "'stage2_template'", "'chatml'", overrides={"stage2_template": "chatml"}),
    config_case("negative-lr", "'stage1_lr'", "negative", overrides=["stage1_lr=-1e-3"]),
    config_case("nan-lr", "'stage2_lr'", "finite", overrides=["stage2_lr=nan"]),
    config_case("zero-batch", "'stage2_batch'", "positive", overrides=["stage2_batch=0"]),
    config_case("zero-save-every", "'save_every'", "positive", overrides=["save_every=0"]),
    config_case("zero-keep-checkpoints", "'keep_checkpoints'", overrides=["keep_checkpoints=0"]),
    config_case("negative-eval-every", "'eval_every'", overrides=["eval_every=-5"]),
    config_case("unknown-field", "unknown config field", "'stage3_lr'", overrides=["stage3_lr=1"]),
    config_case("int-given-text", "'stage1_steps'", "expected int", overrides=["stage1_steps=ten"]),
    config_case("bool-given-maybe", "'bf16'", "true or false", overrides=["bf16=maybe"]),
    config_case("override-without-equals", "'stage1_lr'", "key=value", overrides=["stage1_lr"]),
    config_case("unknown-projector", "'projector'", "'mlp9'", overrides=["projector=mlp9"]),
    config_case("unknown-data-source", "'data_source'", "'laion'", overrides=["data_source=laion"]),
    config_case("file-invalid-json", "not valid JSON", file=("run.json", b'{"stage1_lr": 1e-3,')),
    config_case("file-invalid-yaml", "not valid YAML", file=("run.yaml", b"stage1_lr: [1e-3\n")),
    config_case("file-not-a-mapping", "expected a mapping", file=("run.yaml", b"- stage1_lr\n- 1e-3\n")),
    config_case("file-latin1", "not valid JSON", file=("run.json", '{"data_dir": "caf\xe9"}'.encode("latin-1"))),
    config_case("file-bad-value", "'grad_accum'", file=("run.json", b'{"grad_accum": 0}')),
    config_case("lm-dir-missing", "'lm_name'", "/nonexistent/lm", "does not exist",
                overrides={"lm_name": "/nonexistent/lm"}, build=True),
]


def max_length_beyond_the_lm() -> Case:
    def run(tmp: Path, ctx: dict):
        from minillava.train import check_max_length
        check_max_length(load_config("tiny", ["max_length=4096"]), ctx["model"])
    return Case("config-max-length-beyond-lm-positions", run, ConfigError, ("'max_length'", "4096", "512"))


def unknown_template_at_inference() -> Case:
    def run(tmp: Path, ctx: dict):
        from minillava.inference import answer_batch
        answer_batch(None, ["What is it?"], template="llama3")
    return Case("inference-unknown-template", run, ValueError, ("unknown template", "'llama3'"))


# --- checkpoints, model directories, teacher output -------------------------------------------------------------

def checkpoint_case(name: str, damage: Callable[[Path], None], *needles: str) -> Case:
    def run(tmp: Path, ctx: dict):
        from minillava.checkpoint import verify
        path = tmp / "step_0000002"
        shutil.copytree(ctx["checkpoint"], path)
        damage(path)
        verify(path)
    return Case(f"checkpoint-{name}", run, ValueError, ("step_0000002", *needles))


def truncate_file(name: str, keep: int = 50):
    return lambda p: (p / name).write_bytes((p / name).read_bytes()[:keep])


def flip_byte(name: str):
    def damage(p: Path):
        data = bytearray((p / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (p / name).write_bytes(bytes(data))
    return damage


CHECKPOINT_CASES = [
    checkpoint_case("weights-truncated", truncate_file("weights.safetensors"), "weights.safetensors",
                    "truncated or corrupt"),
    checkpoint_case("optimizer-one-bit-flipped", flip_byte("optimizer.safetensors"), "optimizer.safetensors",
                    "truncated or corrupt"),
    checkpoint_case("state-json-truncated", truncate_file("state.json", 30), "state.json", "unreadable"),
    checkpoint_case("state-json-no-files", lambda p: (p / "state.json").write_text('{"step": 2}'), "state.json",
                    "'files'"),
    checkpoint_case("weights-missing", lambda p: (p / "weights.safetensors").unlink(), "weights.safetensors"),
]


def model_dir_case(name: str, damage: Callable[[Path], None], *needles: str) -> Case:
    def run(tmp: Path, ctx: dict):
        from minillava.model.build import load_model
        path = tmp / "model"
        shutil.copytree(ctx["model_dir"], path)
        damage(path)
        load_model(path)
    return Case(f"model-dir-{name}", run, ValueError, needles)


MODEL_CASES = [
    model_dir_case("config-not-json", lambda p: (p / "config.json").write_text("{oops"), "config.json", "not valid JSON"),
    model_dir_case("weights-truncated", truncate_file("model.safetensors", 40), "model.safetensors",
                   "cannot load the trained weights"),
    model_dir_case("weights-for-another-projector",
                   lambda p: (p / "config.json").write_text(json.dumps({
                       **json.loads((p / "config.json").read_text()), "projector": "linear"})),
                   "model.safetensors", "cannot load the trained weights"),
]


def teacher_jsonl_case(name: str, content: bytes, *needles: str) -> Case:
    def run(tmp: Path, ctx: dict):
        from minillava.data.chat_teacher import jsonl_to_llava_json
        path = tmp / "teacher.jsonl"
        path.write_bytes(content)
        jsonl_to_llava_json(path, tmp / "out.json")
    return Case(f"teacher-jsonl-{name}", run, DataError, ("teacher.jsonl", *needles))


TEACHER_CASES = [
    teacher_jsonl_case("latin1-line", (json.dumps(GOOD) + "\n").encode() + '{"id": "caf\xe9"}\n'.encode("latin-1"),
                       "not UTF-8"),
    teacher_jsonl_case("duplicate-id", ((json.dumps(GOOD) + "\n") * 2).encode(), "'s0'", "appears twice"),
    teacher_jsonl_case("bad-sample", (json.dumps(sample(conversations=[])) + "\n").encode(), "line 1",
                       "'conversations'"),
]

CASES = (IMAGE_CASES + [directory_as_image()] + LLAVA_CASES + COCO_CASES + TOKEN_CASES + CONFIG_CASES
         + [max_length_beyond_the_lm(), unknown_template_at_inference()] + CHECKPOINT_CASES + MODEL_CASES + TEACHER_CASES)


# --- fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(tmp_path_factory, backbone_dirs, random_model):
    """What the cases need: a 10-scene set, a processor, a tokenizer, one checkpoint and one model directory."""
    from minillava.data.shapes import write_shapes_dataset
    from minillava.model.backbones import image_processor_class
    from minillava.model.build import save_model
    from minillava import checkpoint as ckpt
    from minillava.train import make_optimizer

    root = tmp_path_factory.mktemp("corpus")
    write_shapes_dataset(root / "scenes", 10, seed=0)
    cfg = load_config("tiny", dict(vision_name=str(backbone_dirs[0]), lm_name=str(backbone_dirs[1])))
    optimizer = make_optimizer(list(random_model.projector.parameters()), 1e-3, 0.0, "cpu")
    scheduler = __import__("torch").optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    checkpoint = ckpt.save(root / "run", 2, ckpt.model_weights(random_model, include_lm=False), optimizer, scheduler,
                                 {"stage": 1}, keep=1)
    model_dir = save_model(random_model, cfg, root / "model", include_lm=False)
    return {"scenes": root / "scenes", "processor": image_processor_class().from_pretrained(backbone_dirs[0]),
            "tokenizer": random_model.tokenizer, "model": random_model, "checkpoint": checkpoint,
            "model_dir": model_dir}


def test_corpus_size():
    """How many bad or odd inputs are tried (reported in the issue)."""
    assert len(CASES) == len({c.name for c in CASES}) >= 90


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case: Case, ctx, tmp_path):
    if case.error is None:  # odd but usable: loads cleanly
        result = case.run(tmp_path, ctx)
        assert case.check is None or case.check(result)
        return
    if case.error == "skip":  # the user asked for skipping: each skip counted and explained
        kept, skipped = case.run(tmp_path, ctx)
        assert case.check((kept, skipped)), (len(kept), skipped)
        for needle in case.needles:
            assert any(needle in reason for reason in skipped), (needle, skipped)
        assert all("\n" not in reason for reason in skipped)
        return
    with pytest.raises(Exception) as info:
        case.run(tmp_path, ctx)
    assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for needle in case.needles:
        assert needle in message, (needle, message)
