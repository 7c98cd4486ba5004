"""A local web page for a trained workdir: every task in a browser, and the run's curves and cards.

    pip install -e ".[serve]"
    python -m cm3leon_jax.serve --workdir W [--port 7860] [--stage sft|pretrain]

then open http://127.0.0.1:7860. The model is the one `generate` loads (W/sft when it has a
checkpoint, else W/pretrain; `--stage` chooses), loaded once and shared by every request; requests
queue and run one at a time. The server listens on 127.0.0.1 unless `--host` says otherwise,
never makes a public share link, and refuses uploads over `--max_upload_mb` and images over
`--max_image_pixels`. A workdir without a model still serves the page, which says which command
trains one.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from cm3leon_jax import cli  # noqa: F401 - defines --workdir (and --config, unused here)

_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every "
                            "interface; only on a network you trust: the page has no login).")
_PORT = flags.DEFINE_integer("port", 7860, "Port to listen on.")
_STAGE = flags.DEFINE_enum("stage", None, ["pretrain", "sft"],
                           "Which model: default sft if W/sft has a checkpoint, else pretrain.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Rows per compiled decoding call.")
_MAX_UPLOAD_MB = flags.DEFINE_integer("max_upload_mb", 16, "Largest upload accepted, in MB.")
_MAX_IMAGE_PIXELS = flags.DEFINE_integer("max_image_pixels", 4096 * 4096,
                                         "Largest image accepted, in pixels (width x height).")
_QUEUE_SIZE = flags.DEFINE_integer("queue_size", 32, "Requests that may wait; more are refused.")


def main(argv: list[str]) -> None:
    cli.start_app_main(argv, flags.FLAGS.workdir)
    try:
        import gradio  # noqa: F401, PLC0415
    except ImportError:
        print('error: the page needs gradio: pip install -e ".[serve]"', file=sys.stderr)
        sys.exit(2)
    from cm3leon_jax.serve import page  # noqa: PLC0415
    from cm3leon_jax.serve.service import Service  # noqa: PLC0415

    workdir = flags.FLAGS.workdir
    if not os.path.isdir(workdir):
        print(f"error: --workdir {workdir} is not a directory", file=sys.stderr)
        sys.exit(2)
    service = Service(workdir, stage=_STAGE.value, batch_size=_BATCH_SIZE.value,
                      max_image_pixels=_MAX_IMAGE_PIXELS.value)
    print(service.describe(), flush=True)
    blocks = page.build(service)
    blocks.queue(default_concurrency_limit=1, max_size=_QUEUE_SIZE.value)
    try:
        blocks.launch(server_name=_HOST.value, server_port=_PORT.value, share=False,
                      max_file_size=f"{_MAX_UPLOAD_MB.value}mb",
                      allowed_paths=[os.path.abspath(workdir)], footer_links=["api"],
                      ssr_mode=False)
    except OSError as error:  # the port is taken
        print(f"error: cannot listen on {_HOST.value}:{_PORT.value}: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app.run(main)
