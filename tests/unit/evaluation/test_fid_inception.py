"""Standard FID features from pytorch-fid's weights file, without the file: a random state dict in
its exact format. pytorch-fid itself cannot run here (its torchvision needs a CUDA torch), so the
file format, the shapes, the preprocessing and every layer kind are checked against torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cm3leon_jax.evaluation import fid, inception

TENSORS_IN_FILE = 566  # the module's state dict: 94 conv+BN layers x 5, fc x 2, 94 BN counters


def _random_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in inception.expected_shapes().items():
        if key.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0, (2.0 / fan_in) ** 0.5, shape)
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        state[key] = torch.tensor(value, dtype=torch.float32)
        if key.endswith("bn.running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / inception.FILE_NAME
    state = _random_state_dict()
    assert len(state) == TENSORS_IN_FILE
    torch.save(state, path)
    return path, state


def test_file_format_loads_and_gives_2048_features(weights, tmp_path):
    path, state = weights
    extractor = fid.feature_extractor(None, None, inception_weights=str(path))
    assert extractor.name == fid.INCEPTION and inception.FILE_NAME in extractor.describe
    images = np.random.default_rng(1).integers(0, 256, (3, 40, 56, 3), np.uint8)
    features = extractor(images)
    assert features.shape == (3, inception.FEATURES) and np.isfinite(features).all()
    assert (features >= 0).all() and features.std() > 0  # after ReLU and the mean pool
    # The same tensors as .npz give the same features.
    npz = tmp_path / "inception.npz"
    np.savez(npz, **{k: v.numpy() for k, v in state.items()})
    again = fid.feature_extractor(None, None, inception_weights=str(npz))(images)
    np.testing.assert_allclose(again, features, rtol=1e-6, atol=1e-6)


def test_bad_weights_files_are_named(weights, tmp_path):
    _, state = weights
    with pytest.raises(FileNotFoundError, match="no such file"):
        inception.load_params(str(tmp_path / "missing.pth"))
    broken = {k: v for k, v in state.items() if not k.startswith("Mixed_7c.branch_pool")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="no 'Mixed_7c.branch_pool.conv.weight'"):
        inception.load_params(str(tmp_path / "broken.pth"))
    wrong = dict(state, **{"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"Conv2d_1a_3x3.conv.weight.*\(32, 3, 5, 5\).*"
                                         r"\(32, 3, 3, 3\)"):
        inception.load_params(str(tmp_path / "wrong.pth"))


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (512, 384)])
def test_preprocessing_is_torchs_bilinear_resize_to_299(size):
    images = np.random.default_rng(2).integers(0, 256, (2, *size, 3), np.uint8)
    ours = np.asarray(inception.preprocess(images))
    # NCHW contiguous, as pytorch-fid's ToTensor gives (torch's channels-last kernel rounds
    # differently, ~3e-5).
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float() / 255
    theirs = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    # Float32 rounding: both sides lie ~5e-6 from a float64 resize; on downscaling torch rounds a
    # few columns' weights differently (up to 3e-5 of the [-1, 1] range).
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=5e-5)


def test_each_layer_kind_matches_torch():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 11, 6)).astype(np.float32)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)

    def nhwc(t):
        return t.permute(0, 2, 3, 1).numpy()

    np.testing.assert_allclose(np.asarray(inception._avg_pool_without_padding(x)),
                               nhwc(F.avg_pool2d(tx, 3, 1, 1, count_include_pad=False)),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(inception._max_pool(x, 1, 1)),
                               nhwc(F.max_pool2d(tx, 3, 1, 1)))
    np.testing.assert_allclose(np.asarray(inception._max_pool(x, 2)), nhwc(F.max_pool2d(tx, 3, 2)))
    layer = inception.Conv("probe", 6, 5, (1, 3), 2, (0, 1))
    weight = rng.normal(size=(5, 6, 1, 3)).astype(np.float32)
    gamma, beta, mean = (rng.normal(size=5).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2, 5).astype(np.float32)
    state = {"probe.conv.weight": weight, "probe.bn.weight": gamma, "probe.bn.bias": beta,
             "probe.bn.running_mean": mean, "probe.bn.running_var": var}
    original = inception.LAYERS
    try:
        inception.LAYERS = (layer,)
        params = inception.params_from_state_dict(state)
    finally:
        inception.LAYERS = original
    ours = np.asarray(inception._conv_bn_relu(params, layer, x))
    theirs = F.relu(F.batch_norm(F.conv2d(tx, torch.from_numpy(weight), stride=2, padding=(0, 1)),
                                 torch.from_numpy(mean), torch.from_numpy(var),
                                 torch.from_numpy(gamma), torch.from_numpy(beta), False, 0.0,
                                 inception.BN_EPS))
    np.testing.assert_allclose(ours, nhwc(theirs), rtol=1e-5, atol=1e-5)
