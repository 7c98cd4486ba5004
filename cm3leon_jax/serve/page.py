"""The page itself (gradio Blocks): a tab per task, one for the run, each task an API endpoint.

Every event is also a named API endpoint (`text2image`, `caption`, `vqa`, `edit`, `infill`,
`run`), which is how tests/integration/test_serve.py drives it with gradio's own client.
Events run one at a time through gradio's queue (the model is one); a refusal of the service is
shown as gradio's error message in the page, never as a traceback, and the server goes on.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from typing import Callable

import numpy as np

from cm3leon_jax.serve import run_view
from cm3leon_jax.serve.service import (IMAGE_SAMPLES, RETRIEVAL_CHOICES, ImageSettings,
                                       RequestProblem, Sample, Service)

TITLE = "cm3leon_jax"
NO_PICK = "(none: use the upload)"


def _guarded(function: Callable) -> Callable:
    """`function` with every failure turned into a message in the page."""
    import gradio as gr  # noqa: PLC0415

    @functools.wraps(function)
    def run(*args):
        try:
            return function(*args)
        except RequestProblem as problem:
            raise gr.Error(str(problem), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001 - the server must outlive any request
            logging.exception("request failed")
            raise gr.Error(f"the request failed: {type(error).__name__}: {error}",
                           print_exception=False) from None
    return run


def _pictures(samples: list[Sample]) -> list[tuple[np.ndarray, str]]:
    """A gallery's value: (picture, caption) pairs."""
    return [(sample.image, sample.label) for sample in samples]


def build(service: Service):
    """The gr.Blocks page over `service`."""
    import gradio as gr  # noqa: PLC0415

    examples = service.test_examples()
    pick_choices = [NO_PICK] + [f"{i}: {caption}" for i, (_, caption) in enumerate(examples)]
    scratch = tempfile.mkdtemp(prefix="cm3leon_serve_")

    def chosen_image(upload, pick):
        """The uploaded file when there is one, else the picked test image."""
        if upload:
            return upload
        if pick and pick != NO_PICK:
            index = int(str(pick).split(":", 1)[0])
            if not 0 <= index < len(examples):
                raise RequestProblem(f"no test example {index}")
            return examples[index][0]
        return None

    def preview(upload, pick):
        image = chosen_image(upload, pick)
        return None if image is None else service.read_image(image)[0]

    def image_inputs():
        with gr.Row():
            upload = gr.File(label="image (upload)", file_types=["image"], type="filepath")
            pick = gr.Dropdown(pick_choices, value=NO_PICK, label="or a test-split image",
                               interactive=bool(examples))
            shown = gr.Image(label="the model sees", interactive=False, height=160)
        for trigger in (upload.change, pick.change):
            trigger(_guarded(preview), [upload, pick], shown, api_visibility="private")
        return upload, pick

    def settings_inputs(upscale_allowed: bool):
        with gr.Accordion("sampling (defaults: generate's)", open=False):
            with gr.Row():
                samples = gr.Slider(1, 16, value=IMAGE_SAMPLES, step=1, label="samples")
                cfg = gr.Slider(1.0, 8.0, value=ImageSettings.cfg_scale, step=0.5,
                                label="CFG alpha (1 = off)")
                top_p = gr.Slider(0.05, 1.0, value=ImageSettings.top_p, step=0.05, label="top-p")
                temperature = gr.Slider(0.0, 2.0, value=ImageSettings.temperature, step=0.05,
                                        label="temperature (0 = greedy)")
            with gr.Row():
                contrastive = gr.Checkbox(False, label="contrastive decoding (CD-K)")
                seed = gr.Number(0, precision=0, label="seed")
                upscale = gr.Checkbox(False, label="upscale (super-resolution)",
                                      visible=upscale_allowed)
        return samples, cfg, top_p, temperature, contrastive, seed, upscale

    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(f"# {TITLE}\n{service.describe()}")
        with gr.Tab("text to image"):
            prompt = gr.Textbox(label="prompt", placeholder="a red circle at the top left",
                                elem_id="prompt")
            retrieval = gr.Radio(list(RETRIEVAL_CHOICES), value="auto",
                                 label="retrieved documents (auto: as the model was trained)")
            settings = settings_inputs(service.upsampler is not None)
            go = gr.Button("generate", variant="primary", elem_id="generate")
            gallery = gr.Gallery(label="samples, best first", columns=4, elem_id="samples",
                                 format="png")
            summary = gr.Markdown()
            documents = gr.Gallery(label="retrieved documents", columns=4)

            def text_to_image(prompt, retrieval, samples, cfg, top_p, temperature, contrastive,
                              seed, upscale):
                answer = service.text_to_image(prompt, ImageSettings(
                    num_samples=int(samples), cfg_scale=cfg, top_p=top_p, temperature=temperature,
                    contrastive=bool(contrastive), retrieval=retrieval, upscale=bool(upscale),
                    seed=int(seed or 0)))
                return _pictures(answer.samples), answer.summary, _pictures(answer.documents)
            inputs = [prompt, retrieval, *settings]
            go.click(_guarded(text_to_image), inputs, [gallery, summary, documents],
                     api_name="text2image")
            prompt.submit(_guarded(text_to_image), inputs, [gallery, summary, documents],
                          api_visibility="private")

        with gr.Tab("caption"):
            upload, pick = image_inputs()
            retrieval = gr.Radio(list(RETRIEVAL_CHOICES), value="auto",
                                 label="retrieved documents")
            go = gr.Button("caption", variant="primary")
            text = gr.Textbox(label="caption", interactive=False)
            summary = gr.Markdown()
            documents = gr.Gallery(label="retrieved documents", columns=4)

            def caption(upload, pick, retrieval):
                answer = service.caption(chosen_image(upload, pick), retrieval)
                return answer.texts[0], answer.summary, _pictures(answer.documents)
            go.click(_guarded(caption), [upload, pick, retrieval], [text, summary, documents],
                     api_name="caption")

        with gr.Tab("question answering"):
            upload, pick = image_inputs()
            question = gr.Textbox(label="question", placeholder="what colour is the circle?")
            go = gr.Button("answer", variant="primary")
            text = gr.Textbox(label="answer", interactive=False)
            summary = gr.Markdown()

            def vqa(upload, pick, question):
                answer = service.vqa(chosen_image(upload, pick), question)
                return answer.texts[0], answer.summary
            go.click(_guarded(vqa), [upload, pick, question], [text, summary], api_name="vqa")

        with gr.Tab("edit"):
            upload, pick = image_inputs()
            instruction = gr.Textbox(label="instruction", placeholder="make the circle green")
            settings = settings_inputs(False)
            go = gr.Button("edit", variant="primary")
            gallery = gr.Gallery(label="source, then edits best first", columns=4, format="png")
            summary = gr.Markdown()

            def edit(upload, pick, instruction, samples, cfg, top_p, temperature, contrastive,
                     seed, upscale):
                del upscale  # editing keeps the base resolution
                answer = service.edit(chosen_image(upload, pick), instruction, ImageSettings(
                    num_samples=int(samples), cfg_scale=cfg, top_p=top_p, temperature=temperature,
                    contrastive=bool(contrastive), seed=int(seed or 0)))
                return _pictures(answer.samples), answer.summary
            go.click(_guarded(edit), [upload, pick, instruction, *settings], [gallery, summary],
                     api_name="edit")

        with gr.Tab("infill"):
            masked = gr.Textbox(label="text with <mask> where words are missing",
                                placeholder="a <mask> circle at the top left")
            go = gr.Button("fill in", variant="primary")
            text = gr.Textbox(label="filled", interactive=False)
            summary = gr.Markdown()

            def infill(masked):
                answer = service.infill(masked)
                return answer.texts[0], answer.summary
            go.click(_guarded(infill), masked, [text, summary], api_name="infill")

        with gr.Tab("the run"):
            refresh = gr.Button("re-read the workdir")
            curves = [gr.Image(label=f"{stage}: training and validation loss", type="filepath",
                               interactive=False) for stage in run_view.DECODER_RUNS]
            grids = gr.Gallery(label="sample grids", columns=3, height=420, object_fit="contain")
            with gr.Row():
                figures = gr.Markdown(label="metrics.json")
                with gr.Column():
                    model = gr.Markdown()
                    data = gr.Markdown()

            def run_record() -> dict:
                """Everything the tab shows; curve and grid PNGs as paths on the server."""
                return {"curves": run_view.curves(service.workdir, scratch),
                        "grids": (run_view.eval_samples(service.workdir, scratch)
                                  + run_view.sample_grids(service.workdir)),
                        "metrics": run_view.metrics_markdown(service.workdir),
                        "model_card": run_view.model_card(service.workdir, service.generator),
                        "data_card": run_view.data_card(service.workdir)}

            def run_tab():
                record = run_record()
                return (*(gr.Image(value=record["curves"].get(stage),
                                   visible=stage in record["curves"])
                          for stage in run_view.DECODER_RUNS),
                        record["grids"], record["metrics"], record["model_card"],
                        record["data_card"])
            outputs = [*curves, grids, figures, model, data]
            refresh.click(_guarded(run_tab), None, outputs, api_visibility="private")
            page.load(_guarded(run_tab), None, outputs, api_visibility="private")
            gr.api(_guarded(run_record), api_name="run")
    return page
