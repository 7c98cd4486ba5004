"""The bi-encoder reproduces Hugging Face `CLIPModel` (imported weights) and the byte tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm3leon_jax.retrieval import byte_tokenizer, encoder, train_encoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _small_clip(hidden_act: str, eos_token_id: int):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
                         eos_token_id=eos_token_id, bos_token_id=97, pad_token_id=1),
        vision_config=dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2,
                           num_attention_heads=5, image_size=24, patch_size=8,
                           hidden_act=hidden_act),
        projection_dim=24)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # random, not near-zero, LayerNorm affine parameters and biases
        for name, param in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("hidden_act,eos_token_id,safe", [("quick_gelu", 98, True),
                                                          ("gelu", 2, False)])
def test_hf_clip_import_matches_transformers(tmp_path, hidden_act, eos_token_id, safe):
    model = _small_clip(hidden_act, eos_token_id)
    model.save_pretrained(tmp_path, safe_serialization=safe)
    imported = encoder.load_hf_clip(tmp_path)

    rng = np.random.default_rng(0)
    ids = rng.integers(3, 96, size=(3, 16))
    lengths = [5, 16, 9]
    for row, length in enumerate(lengths):  # BOS … EOS then padding (with EOS ids, as CLIP does)
        ids[row, 0] = 97
        ids[row, length - 1:] = 98 if eos_token_id != 2 else 2
    if eos_token_id == 2:  # legacy pooling: the largest id marks the end
        ids = np.where(ids == 2, 2, ids % 90 + 3)
        for row, length in enumerate(lengths):
            ids[row, length - 1] = 98
    pixels = rng.normal(size=(3, 3, 24, 24)).astype(np.float32)
    with torch.no_grad():
        hf_text = model.get_text_features(input_ids=torch.tensor(ids)).pooler_output.numpy()
        hf_image = model.get_image_features(pixel_values=torch.tensor(pixels)).pooler_output.numpy()

    variables = {"params": imported.params}
    ours_text = imported.model.apply(variables, jnp.asarray(ids),
                                     method=encoder.ClipModel.text_features)
    ours_image = imported.model.apply(variables, jnp.asarray(encoder.hf_image_layout(pixels)),
                                      method=encoder.ClipModel.image_features)
    np.testing.assert_allclose(np.asarray(ours_text), hf_text, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours_image), hf_image, atol=1e-5, rtol=1e-5)
    assert float(imported.params["logit_scale"]) == pytest.approx(float(model.logit_scale.detach()))


def test_hf_clip_import_refuses_incomplete_checkpoint(tmp_path):
    model = _small_clip("quick_gelu", 98)
    model.save_pretrained(tmp_path)
    from safetensors.numpy import load_file, save_file
    (path,) = tmp_path.glob("*.safetensors")
    state = load_file(str(path))
    del state["visual_projection.weight"]
    save_file(state, str(path))
    with pytest.raises(ValueError, match="visual_projection.weight"):
        encoder.load_hf_clip(tmp_path)


def test_byte_tokenizer_round_trip_and_truncation():
    ids = byte_tokenizer.encode(["a red circle", "é" * 20, ""], max_length=12)
    assert ids.shape == (3, 12) and ids.dtype == np.int32
    assert ids[0, 0] == byte_tokenizer.BOS_ID and ids[0, 11] == byte_tokenizer.EOS_ID
    assert ids[2, :3].tolist() == [byte_tokenizer.BOS_ID, byte_tokenizer.EOS_ID,
                                   byte_tokenizer.PAD_ID]
    assert byte_tokenizer.decode(ids[0]) == "a red circ"  # 10 bytes fit between BOS and EOS
    assert (ids[:, :] == byte_tokenizer.EOS_ID).sum(axis=1).tolist() == [1, 1, 1]
    assert byte_tokenizer.decode(ids[1]) == "é" * 5
    assert byte_tokenizer.has_text(ids).tolist() == [True, True, False]


def test_document_embedding_is_renormalised_mean_of_modalities():
    text = jnp.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    image = jnp.array([[0.0, 5.0], [4.0, 0.0], [1.0, -1.0]])
    docs = encoder.combine_modalities(text, image, jnp.array([True, False, True]),
                                      jnp.array([True, True, False]))
    np.testing.assert_allclose(docs[0], [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    np.testing.assert_allclose(docs[1], [1.0, 0.0], atol=1e-6)  # image only
    np.testing.assert_allclose(docs[2], [2 ** -0.5, 2 ** -0.5], atol=1e-6)  # text only


def test_patch_keep_mask_equals_removing_the_patches():
    arch = encoder.ClipArchitecture(text_vocab_size=byte_tokenizer.VOCAB_SIZE, text_max_length=8,
                                    text_width=16, text_layers=1, text_heads=2, text_mlp_dim=32,
                                    eos_token_id=byte_tokenizer.EOS_ID, image_size=8, patch_size=4,
                                    vision_width=16, vision_layers=2, vision_heads=2,
                                    vision_mlp_dim=32, projection_dim=8)
    params = encoder.init_params(arch, jax.random.key(1))
    pixels = jax.random.normal(jax.random.key(2), (1, 8, 8, 3))
    keep = jnp.array([[True, False, True, True]])
    masked = encoder.ClipModel(arch).apply({"params": params}, pixels, keep,
                                           method=encoder.ClipModel.image_features)
    # Reference: run the same blocks on the sequence without patch 1.
    vision = params["vision_model"]
    embedded = encoder.VisionEmbeddings(arch).apply({"params": vision["embeddings"]}, pixels)
    embedded = jnp.delete(embedded, 2, axis=1)  # class token is position 0, patch 1 is position 2
    x = encoder._layer_norm(arch.vision_layer_norm_eps, "n").apply(
        {"params": vision["pre_layrnorm"]}, embedded)
    x = encoder.Encoder(arch.vision_tower).apply({"params": vision["encoder"]}, x, None)
    x = encoder._layer_norm(1e-5, "n").apply({"params": vision["post_layernorm"]}, x[:, 0])
    reference = x @ params["visual_projection"]["kernel"]
    np.testing.assert_allclose(np.asarray(masked), np.asarray(reference), atol=1e-5)


def test_encoder_near_chance_is_warned_about():
    figures = {"test_documents": 200, "text_to_image_recall@5": 0.07, "first_loss": 4.185,
               "final_loss": 4.149}
    warning = train_encoder.near_chance_warning(figures)
    assert "stayed near chance (text-to-image recall@5 0.070, chance 0.025" in warning
    assert "loss 4.185 -> 4.149" in warning and "config.retrieval.train_steps" in warning
    learned = {**figures, "text_to_image_recall@5": 0.13, "final_loss": 2.6}
    assert train_encoder.near_chance_warning(learned) is None
    assert "recall@5 0.030" in train_encoder.near_chance_warning(
        {**learned, "text_to_image_recall@5": 0.03})
