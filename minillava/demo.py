"""`minillava demo`: a Gradio chat about one image, as LLaVA's own web demo serves it (upload, ask, streamed answer).

The answer streams token by token (transformers' ``TextIteratorStreamer`` fed by ``generate`` on a worker thread);
a checkbox adds the §5 grounding view from ``viz/attention.py``: the mean attention from the answer tokens to the
N image patches, drawn over the picture.

gradio is an optional extra (``pip install 'minillava[demo]'``): it is imported only inside ``build_demo``, so the
core package never needs it. The server binds 127.0.0.1 by default and sends no analytics.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from .conversation import IMAGE_TOKEN, get_template, prompt_ids, stop_token_ids

GRADIO_MISSING = "the web demo needs gradio: pip install 'minillava[demo]'"


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check / telemetry requests
    try:
        import gradio as gr
    except ImportError:
        raise ImportError(GRADIO_MISSING) from None
    return gr


@torch.no_grad()
def stream_answer(model, pixel_values: torch.Tensor, question: str, *, history: list[tuple[str, str]] = (),
                  template: str = "vicuna_v1", max_new_tokens: int = 64):
    """Yield the answer so far, growing token by token (greedy, the same text ``inference.answer_batch`` gives).

    ``pixel_values``: (1, 3, H, W). ``history``: earlier (question, answer) turns about the same image; the
    ``<image>`` placeholder belongs to the first human turn, as in training.
    """
    from transformers import TextIteratorStreamer

    turns = list(history)
    if turns:
        turns[0] = (f"{IMAGE_TOKEN}\n{turns[0][0]}", turns[0][1])
    else:
        question = f"{IMAGE_TOKEN}\n{question}"
    device = next(model.lm.parameters()).device
    tmpl = get_template(template, model.tokenizer)
    ids = prompt_ids(question, model.tokenizer, tmpl, image_tokens=model.num_image_tokens,
                     history=turns)[None].to(device)                      # (1, T), N <image> ids inside
    embeds = model.embed(ids, model.image_features(pixel_values.to(device, model.vision.dtype)))  # (1, T, D)
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    kwargs = dict(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                  do_sample=False, eos_token_id=stop_token_ids(tmpl, model.tokenizer),
                  pad_token_id=model.tokenizer.pad_token_id, streamer=streamer)
    worker = threading.Thread(target=model.lm.generate, kwargs=kwargs, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text.strip()
    worker.join()


def attention_picture(model, pixel_values: torch.Tensor, image, question: str, *, template: str = "vicuna_v1"):
    """The answer's mean attention over the image patches (over layers, heads and answer tokens) as a PIL image.

    The question is answered afresh without earlier turns (``answer_attention`` takes one question), so after the
    first turn the map belongs to the single-turn answer, which may differ from the one in the chat.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    from .viz.attention import aggregate, answer_attention, draw_heatmap

    with torch.no_grad():
        z = model.image_features(pixel_values.to(next(model.lm.parameters()).device, model.vision.dtype))[0]
    result = answer_attention(model, z, question, template=template)  # attn: (L, H, A, N)
    weights = aggregate(result, "mean").mean(dim=0)                     # (A, N) → (N,)
    fig = Figure(figsize=(4.0, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    draw_heatmap(fig.add_subplot(1, 1, 1), image, weights)
    fig.tight_layout()
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def build_demo(model, processor, cfg, *, max_new_tokens: int = 64):
    """A ``gradio.Blocks`` app: image, question box, streamed chat, and an attention-map checkbox."""
    gr = _import_gradio()
    from .data.dataset import load_image

    template = cfg.stage2_template

    def respond(image_path, question, chat, turns, show_attention):
        if not image_path:
            raise gr.Error("Upload an image first.")
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question about the image.")
        image = load_image(Path(image_path))
        pixels = processor(images=[image], return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
        chat = list(chat or []) + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        answer = ""
        for answer in stream_answer(model, pixels, question, history=turns or [], template=template,
                                    max_new_tokens=max_new_tokens):
            chat[-1] = {"role": "assistant", "content": answer}
            yield chat, turns, "", gr.skip()
        turns = list(turns or []) + [(question, answer)]
        picture = attention_picture(model, pixels, image, question, template=template) if show_attention else None
        yield chat, turns, "", picture

    chatbot_kwargs = {"type": "messages"} if "type" in _parameters(gr.Chatbot) else {}  # gradio 5 needs it
    with gr.Blocks(title="minillava", analytics_enabled=False) as demo:
        gr.Markdown("## minillava — ask about an image\nA small LLaVA: CLIP patches → projector W → chat LM "
                    "(Liu et al., *Visual Instruction Tuning*, 2023). Answers are greedy and stream as they are made.")
        turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="image", elem_id="image", height=260)
                show_attention = gr.Checkbox(label="show where the answer looks (attention from the answer tokens to "
                                                   "the image patches, mean over layers and heads)",
                                             value=False, elem_id="show-attention")
                attention = gr.Image(label="attention map: answer → image patches",
                                     elem_id="attention", interactive=False, height=300)
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="conversation", elem_id="chat", height=420, **chatbot_kwargs)
                question = gr.Textbox(label="question", placeholder="What color is the circle?", elem_id="question")
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear = gr.Button("Clear", elem_id="clear")
        outputs = [chat, turns, question, attention]
        inputs = [image, question, chat, turns, show_attention]
        ask.click(respond, inputs, outputs)
        question.submit(respond, inputs, outputs)
        # a new picture starts a new conversation: earlier answers were about another image
        reset = lambda: ([], [], None)  # noqa: E731
        image.change(reset, None, [chat, turns, attention])
        clear.click(reset, None, [chat, turns, attention])
    return demo


def _parameters(fn) -> set[str]:
    import inspect
    return set(inspect.signature(fn).parameters)


def run_demo(model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 7860, max_new_tokens: int = 64,
             device: str = "cpu") -> None:
    """Load a model directory and serve the demo until interrupted (Ctrl-C)."""
    _import_gradio()  # fail before the model loads, with the install hint
    from .model.build import load_model

    model, processor, cfg = load_model(model_dir, device=device)
    demo = build_demo(model, processor, cfg, max_new_tokens=max_new_tokens)
    demo.queue(default_concurrency_limit=1)  # one generation at a time: the model is shared
    launch = dict(server_name=host, server_port=port, share=False, show_error=True)
    if "ssr_mode" in _parameters(demo.launch):
        launch["ssr_mode"] = False  # no Node server; the prebuilt frontend is served by Python
    print(f"minillava demo: {model_dir} on http://{host}:{port}", flush=True)
    demo.launch(**launch)
