"""Install cm3leon_jax: `pip install -e .` (library + entry points) or `pip install -e .[test]`."""
import setuptools

setuptools.setup(
    name="cm3leon_jax",
    version="0.1.0",
    description="JAX/Flax training system for CM3leon-style mixed-modal (text + image token) models.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["cm3leon_jax", "cm3leon_jax.*"]),
    install_requires=[
        "jax",
        "flax",
        "optax",
        "orbax-checkpoint",
        # scann 1.4.2 fails to import with TensorFlow 2.21 (undefined absl symbol).
        "tensorflow-cpu~=2.20.0",
        "tensorflow-datasets",
        "sentencepiece",
        "scann",
        "clu",
        "ml-collections",
        "numpy",
        "pillow",
        "absl-py",
        "etils[epath]",
        "importlib_resources",  # tensorflow-datasets imports it without declaring it
        "apache-beam",  # data preparation runs as a Beam pipeline (DirectRunner by default)
        "safetensors",  # Hugging Face export / CLIP import
        "pyyaml",  # model card header
        "matplotlib",  # loss and learning curves as PNG (cm3leon_jax/plots.py)
    ],
    extras_require={
        # torch must be installed as `torch==2.13.0` *before* this extra (see .ci/run): an unpinned
        # torch pulls a multi-GB CUDA build.
        # The browser test also needs Chromium and its driver (Debian: chromium chromium-driver;
        # .ci/run installs them).
        "test": ["pytest", "pytest-xdist", "torch", "transformers", "fsspec", "gradio",
                 "selenium"],
        # python -m cm3leon_jax.serve: the local web page.
        "serve": ["gradio"],
    },
)
