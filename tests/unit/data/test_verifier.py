"""The verifier is the judge of every later quality figure: it must be right and hard to fool."""

import numpy as np
import pytest

from cm3leon_jax.data.sources.shapes import render, scenes, verifier


@pytest.mark.parametrize("size,count", [(32, 400), (64, 100), (256, 20)])
def test_exact_match_on_ground_truth(size, count):
    rng = np.random.default_rng(size)
    hits = 0
    for _ in range(count):
        scene = scenes.sample_scene(rng)
        hits += verifier.matches(render.render(scene, size), [o.key for o in scene.objects])
    assert hits / count >= 0.99


def test_noise_images_match_nothing():
    rng = np.random.default_rng(0)
    for kind in range(40):
        if kind % 2:
            noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        else:  # blocky colour noise: saturated blobs of palette-like colours
            noise = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8)
        detection = verifier.detect(noise)
        assert not detection.valid or not detection.objects, detection


def test_wrong_answers_are_rejected():
    scene = scenes.Scene(scenes.Background("plain", (50, 50, 50), (50, 50, 50)),
                         (scenes.Obj("circle", "red", "large", 4),))
    image = render.render(scene, 32)
    assert verifier.matches(image, [("circle", "red", "large", 4)])
    for wrong in [("square", "red", "large", 4), ("circle", "blue", "large", 4),
                  ("circle", "red", "small", 4), ("circle", "red", "large", 0)]:
        assert not verifier.matches(image, [wrong])
    assert not verifier.matches(image, [("circle", "red", "large", 4), ("cross", "red", "small", 0)])


def test_blurred_image_still_read():
    """VQ-GAN reconstructions are slightly soft: a small blur must not change the reading."""
    from scipy import ndimage
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(50):
        scene = scenes.sample_scene(rng)
        image = render.render(scene, 32).astype(np.float32)
        soft = ndimage.gaussian_filter(image, sigma=(0.5, 0.5, 0))
        hits += verifier.matches(np.clip(soft, 0, 255).astype(np.uint8),
                                 [o.key for o in scene.objects])
    assert hits >= 45


def test_bad_shapes_rejected_with_message():
    with pytest.raises(ValueError, match="square RGB"):
        verifier.detect(np.zeros((32, 32), np.uint8))
