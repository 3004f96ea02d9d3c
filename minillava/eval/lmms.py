"""lmms-eval, the field's evaluation harness, over an exported minillava model (optional: ``minillava[lmms]``).

`minillava export` writes transformers' ``LlavaForConditionalGeneration`` format with its processor and chat
template, so lmms-eval's own ``llava_hf`` model class loads it unchanged; nothing here re-implements it. Two
settings are needed on a CPU with transformers 5: ``device_map`` named explicitly (lmms-eval's default ``""``
is refused by transformers 5) and a float dtype. From the command line::

    minillava export --model runs/quickstart/stage2 --out hf_llava
    python -m lmms_eval --model llava_hf --tasks llava_in_the_wild \\
        --model_args pretrained=hf_llava,device=cpu,device_map=cpu,dtype=float32

lmms-eval 0.7.3 also imports ``decord`` and requires ``torchvision``; the ``torchvision`` wheel on PyPI is built
for CUDA torch, and beside a CPU build of torch it fails to register its operators, which makes transformers'
``AutoProcessor`` import fail ("Could not import module 'AutoProcessor'"). With a CPU torch, install the
matching CPU torchvision from https://download.pytorch.org/whl/cpu, or uninstall torchvision (transformers then
uses its PIL image processors). :func:`check_lmms` says which of these is the matter, in one line.
"""

from __future__ import annotations

from pathlib import Path

LMMS_MISSING = "lmms-eval is not installed: pip install 'minillava[lmms]'"


def check_lmms() -> None:
    """Raise ImportError with one line saying what is missing or broken; return when lmms-eval can load."""
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        raise ImportError(LMMS_MISSING) from None
    try:
        import decord  # noqa: F401  (lmms-eval's llava_hf imports it at module level)
    except ImportError:
        raise ImportError("lmms-eval's llava_hf model needs decord: pip install decord") from None
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass  # absent is fine: transformers falls back to its PIL image processors
    except RuntimeError as e:  # "operator torchvision::nms does not exist": a CUDA torchvision over a CPU torch
        raise ImportError(f"torchvision does not match this torch ({e}); install the CPU build from "
                          "https://download.pytorch.org/whl/cpu or pip uninstall torchvision") from None


def lmms_model_args(hf_dir: str | Path, device: str = "cpu") -> str:
    """The ``--model_args`` string for ``python -m lmms_eval --model llava_hf``."""
    dtype = "float32" if device == "cpu" else "auto"
    return f"pretrained={hf_dir},device={device},device_map={device},dtype={dtype}"


def load_lmms_llava(hf_dir: str | Path, device: str = "cpu", **kwargs):
    """lmms-eval's own ``llava_hf`` model (class ``LlavaHf``) over an exported directory."""
    check_lmms()
    from lmms_eval.models.simple.llava_hf import LlavaHf

    return LlavaHf(pretrained=str(hf_dir), device=device, device_map=device,
                   dtype="float32" if device == "cpu" else "auto", **kwargs)
