"""The papers' numbers, in one place: what the notebooks, reports and ablations print beside ours.

Sources: *Visual Instruction Tuning* (Liu, Li, Wu, Lee; NeurIPS 2023, arXiv 2304.08485) — "the paper" — and
*Improved Baselines with Visual Instruction Tuning* (LLaVA-1.5; arXiv 2310.03744), whose tables are numbered as in
its CVPR 2024 version (arXiv v2; the arXiv v1 note numbers them differently): its scaling table is Table 2. Nothing
here is computed; every value is the paper's, with the table it comes from.
"""

from __future__ import annotations

# Table 4: LLaVA-Bench (COCO) relative score by instruction data; GPT-4 judge, candidate / reference × 100.
TABLE4 = {
    "Full data": {"conv": 83.1, "detail": 75.3, "complex": 96.5, "all": 85.1},
    "Detail + Complex": {"conv": 81.5, "detail": 73.3, "complex": 90.8, "all": 81.9},
    "Conv + 5% Detail + 10% Complex": {"conv": 81.0, "detail": 68.4, "complex": 91.5, "all": 80.5},
    "Conversation only": {"conv": 76.5, "detail": 59.8, "complex": 84.9, "all": 73.8},
    "No instruction tuning": {"conv": 22.0, "detail": 24.0, "complex": 18.5, "all": 21.5},
}
TABLE4_FULL = TABLE4["Full data"]

# Table 5: LLaVA-Bench (In-the-Wild), 24 images and 60 questions, overall relative score.
TABLE5_ALL = {"LLaVA": 67.3, "BLIP-2": 38.1, "OpenFlamingo": 19.1}

# Table 7 (ScienceQA test accuracy, %) and Table 8 (ScienceQA ablations of the 13B model; full recipe 90.92).
SCIENCEQA = {"LLaVA": 90.92, "LLaVA + GPT-4 (judge)": 92.53}
TABLE8 = {
    "best variant (full recipe)": 90.92,
    "last-layer visual features": 89.96,
    "answer before reasoning": 89.77,
    "no stage-1 pre-training": 85.81,
    "7B instead of 13B": 89.84,
}

# LLaVA-1.5's scaling table (Table 2 of the CVPR 2024 version; GQA / MME / MM-Vet), the rows this project refers to.
# Every row up to "+ MLP connector" is a 7B LM at 224 px; the final row is 13B at 336 px.
LLAVA15_SCALING = {
    "LLaVA-7B": {"GQA": None, "MME": 809.6, "MM-Vet": 25.5},
    "+ VQAv2": {"GQA": 47.0, "MME": 1197.0, "MM-Vet": 27.7},
    "+ format prompt": {"GQA": 46.8, "MME": 1323.8, "MM-Vet": 26.3},
    "+ MLP connector": {"GQA": 47.3, "MME": 1355.2, "MM-Vet": 27.8},
    "13B (final)": {"GQA": 63.3, "MME": 1531.3, "MM-Vet": 36.1},
}

# The hyperparameters each stage trained with: LLaVA's from §5 (its opening paragraph), LLaVA-1.5's from the authors'
# scripts/v1_5/pretrain.sh and finetune.sh (per-device batch × 8 GPUs). All use AdamW without weight decay, a cosine
# schedule with warmup ratio 0.03, max length 2048 and bf16.
HYPERPARAMETERS = {
    "LLaVA stage 1": {"data": "CC-595K", "trains": "W", "batch": 128, "lr": 2e-3, "epochs": 1},
    "LLaVA stage 2": {"data": "LLaVA-Instruct-158K", "trains": "W + LM", "batch": 32, "lr": 2e-5, "epochs": 3},
    "LLaVA-1.5 stage 1": {"data": "LAION/CC/SBU-558K", "trains": "W", "batch": 256, "lr": 1e-3, "epochs": 1},
    "LLaVA-1.5 stage 2": {"data": "665K mix", "trains": "W + LM", "batch": 128, "lr": 2e-5, "epochs": 1},
}
COMMON = {"optimizer": "AdamW", "weight_decay": 0.0, "schedule": "cosine", "warmup_ratio": 0.03,
          "max_length": 2048, "dtype": "bf16"}

# §3: the instruction data's three parts (LLaVA-Instruct-158K)
INSTRUCT_158K = {"conversation": 58_000, "detail": 23_000, "complex": 77_000}

# §4.1 names the encoder (CLIP ViT-L/14); its input size is in the authors' scripts: scripts/pretrain.sh loads
# openai/clip-vit-large-patch14 (224 px), scripts/v1_5/pretrain.sh openai/clip-vit-large-patch14-336. The image
# becomes (px / patch)² patch tokens: the CLS token is dropped (the default `select_feature = "patch"` of the authors'
# llava/model/multimodal_encoder/clip_encoder.py).
VISION_ENCODERS = {
    "LLaVA": {"tower": "openai/clip-vit-large-patch14", "px": 224, "patch": 14, "layers": 24, "width": 1024},
    "LLaVA-1.5": {"tower": "openai/clip-vit-large-patch14-336", "px": 336, "patch": 14, "layers": 24, "width": 1024},
}


def image_tokens(model: str) -> int:
    """Patch tokens per image for ``model`` ("LLaVA" or "LLaVA-1.5"): (px / patch)²."""
    v = VISION_ENCODERS[model]
    return (v["px"] // v["patch"]) ** 2


# §5.1: LLaVA-Bench (COCO) — 30 COCO val images, one question of each type per image; Table 5's In-the-Wild set.
LLAVA_BENCH = {"COCO": {"images": 30, "questions": 90}, "In-the-Wild": {"images": 24, "questions": 60}}

# LLaVA-1.5's data (scripts/v1_5/pretrain.sh, finetune.sh): image–caption pairs for stage 1, the instruction mix for
# stage 2 (llava_v1_5_mix665k.json)
LLAVA15_DATA = {"stage 1 pairs": 558_000, "stage 2 mix": 665_000}
