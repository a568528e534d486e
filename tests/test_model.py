"""Our AltCLIP against the reference (transformers.AltCLIPModel), stage by stage, on a tiny random checkpoint.

Tolerances, float32: 1e-5 absolute on hidden states, attentions, embeddings and the loss (observed ≤ 2.4e-6 on
hidden states of magnitude ~8, ≤ 1e-7 on embeddings: the only changes are fused q/k/v matmuls and SDPA vs explicit
softmax); 1e-4 on logits, which are exp(logit_scale) = 100 times a cosine, i.e. 1e-6 on the cosine (observed 1.3e-5).
"""
import pytest
import torch

from altclip import AltCLIPConfig, TextConfig, VisionConfig, config_from_dict
from helpers import images, ragged_batch, save_checkpoint, tiny_reference
from load_weights import load_pretrained

F32 = dict(atol=1e-5, rtol=0)
LOGITS = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = tiny_reference()
    folder = save_checkpoint(ref, tmp_path_factory.mktemp("tiny"))
    return ref, load_pretrained(folder)


def run_both(pair, ids, mask, pixels, **kw):
    ref, ours = pair
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True,
                output_attentions=True, **kw)
        o = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True,
                 output_attentions=True, **kw)
    return r, o


def test_every_stage_matches_the_reference(pair):
    ids, mask = ragged_batch([12, 5, 3])
    r, o = run_both(pair, ids, mask, images(3), return_loss=True)
    for tower in ("text_model_output", "vision_model_output"):
        ro, oo = getattr(r, tower), getattr(o, tower)
        assert len(oo.hidden_states) == len(ro.hidden_states) == 3  # embeddings output + one per block
        for k, (a, b) in enumerate(zip(ro.hidden_states, oo.hidden_states)):
            torch.testing.assert_close(b, a, **F32, msg=f"{tower} hidden_states[{k}]")
        for k, (a, b) in enumerate(zip(ro.attentions, oo.attentions)):
            torch.testing.assert_close(b, a, **F32, msg=f"{tower} attentions[{k}]")
        torch.testing.assert_close(oo.last_hidden_state, ro.last_hidden_state, **F32)
        torch.testing.assert_close(oo.pooler_output, ro.pooler_output, **F32)
    assert o.text_model_output.last_hidden_state.shape == (3, 12, 48)  # the 768-wide (here 48) projection state
    for name in ("text_embeds", "image_embeds", "loss"):
        torch.testing.assert_close(getattr(o, name), getattr(r, name), **F32, msg=name)
    for name in ("logits_per_image", "logits_per_text"):
        torch.testing.assert_close(getattr(o, name), getattr(r, name), **LOGITS, msg=name)


def test_default_attention_path_equals_the_explicit_one(pair):
    """SDPA (no probabilities requested) and softmax(QKᵀ/√d + mask)·V give the same model."""
    _, ours = pair
    ids, mask = ragged_batch([30, 2, 17])
    with torch.no_grad():
        fast = ours(input_ids=ids, attention_mask=mask, pixel_values=images(3))
        slow = ours(input_ids=ids, attention_mask=mask, pixel_values=images(3), output_attentions=True)
    torch.testing.assert_close(fast.logits_per_image, slow.logits_per_image, **LOGITS)
    assert fast.text_model_output.attentions is None and fast.text_model_output.hidden_states is None


def test_features_match_the_reference(pair):
    ref, ours = pair
    ids, mask = ragged_batch([9, 4])
    with torch.no_grad():
        torch.testing.assert_close(ours.get_text_features(ids, mask),
                                   ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, **F32)
        torch.testing.assert_close(ours.get_image_features(images(2)),
                                   ref.get_image_features(pixel_values=images(2)).pooler_output, **F32)


def test_padding_of_very_different_lengths_and_a_512_token_text(pair):
    ids, mask = ragged_batch([512, 3, 2, 200])
    r, o = run_both(pair, ids, mask, images(4))
    torch.testing.assert_close(o.text_model_output.last_hidden_state, r.text_model_output.last_hidden_state, **F32)
    torch.testing.assert_close(o.logits_per_text, r.logits_per_text, **LOGITS)


def test_padding_does_not_change_a_text(pair):
    """A text padded into a batch gets the embedding it gets alone: positions and attention ignore padding."""
    _, ours = pair
    ids, mask = ragged_batch([7, 60])
    with torch.no_grad():
        alone = ours.get_text_features(ids[:1, :7], mask[:1, :7])
        batched = ours.get_text_features(ids, mask)[:1]
    torch.testing.assert_close(batched, alone, **F32)


def test_explicit_position_and_token_type_ids(pair):
    """Explicit position_ids are used as given, not recomputed: they differ from the padding-aware default here (a
    shifted row, and a padded row counting in steps of 2), so code that ignored them would get the default's output."""
    ref, ours = pair
    ids, mask = ragged_batch([8, 5])
    pos = torch.tensor([list(range(40, 48)), [2, 4, 6, 8, 10, 300, 301, 302]])  # default: 2..9 and 2..6, 1, 1, 1
    tt = torch.zeros_like(ids)  # type_vocab_size is 1 (XLM-R): 0 is the only valid token type
    with torch.no_grad():
        a = ref.get_text_features(input_ids=ids, attention_mask=mask, position_ids=pos, token_type_ids=tt)
        b = ours.get_text_features(ids, mask, token_type_ids=tt, position_ids=pos)
        r = ref.text_model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        o = ours.text_model(ids, mask, position_ids=pos).last_hidden_state
        default = ours.get_text_features(ids, mask)
    torch.testing.assert_close(b, a.pooler_output, **F32)
    torch.testing.assert_close(o, r, **F32)
    assert ((b - default).abs().amax(dim=1) > 1e-2).all()  # both rows' positions made a difference


@pytest.mark.parametrize("h,w", [(224, 224), (280, 280), (168, 168), (224, 336), (112, 448), (70, 98)])
def test_interpolate_pos_encoding(pair, h, w):
    ref, ours = pair
    px = images(2, h, w)
    with torch.no_grad():
        r = ref.vision_model(pixel_values=px, interpolate_pos_encoding=True)
        o = ours.vision_model(px, interpolate_pos_encoding=True)
        feats = ours.get_image_features(px, interpolate_pos_encoding=True)
    assert o.last_hidden_state.shape == (2, 1 + (h // 14) * (w // 14), 64)
    torch.testing.assert_close(o.last_hidden_state, r.last_hidden_state, **F32)
    torch.testing.assert_close(o.pooler_output, r.pooler_output, **F32)
    assert feats.shape == (2, 32)


def test_wrong_image_size_without_interpolation_is_an_error(pair):
    _, ours = pair
    with pytest.raises(ValueError, match=r"280x224 does not match the model's 224x224.*interpolate_pos_encoding"):
        ours.get_image_features(images(1, 280, 224))


def test_forward_needs_both_inputs(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="get_text_features"):
        ours(input_ids=ragged_batch([4])[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_takes_float32_inputs_and_returns_float32(pair, tmp_path, dtype):
    ref, ours = pair
    folder = save_checkpoint(ref, tmp_path)
    half = load_pretrained(folder, dtype=dtype)
    assert half.dtype == dtype and half.logit_scale.dtype == torch.float32
    ids, mask = ragged_batch([10, 4])
    with torch.no_grad():
        out = half(input_ids=ids, attention_mask=mask, pixel_values=images(2))
        full = ours(input_ids=ids, attention_mask=mask, pixel_values=images(2))
        img = half.get_image_features(images(2))
    assert out.logits_per_image.dtype == out.text_embeds.dtype == img.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, full.image_embeds)
    assert cos.min() > 0.999, cos  # bfloat16 keeps ~3 significant digits; statistics stay in float32


def test_defaults_are_baai_altclip():
    cfg = AltCLIPConfig()
    assert (cfg.vision.hidden_size, cfg.vision.patch_size, cfg.vision.num_hidden_layers) == (1024, 14, 24)
    assert (cfg.text.vocab_size, cfg.text.hidden_size, cfg.text.max_position_embeddings) == (250002, 1024, 514)
    assert (cfg.text.project_dim, cfg.projection_dim, cfg.vision.hidden_act) == (768, 768, "quick_gelu")


def test_config_from_dict_follows_the_reference():
    from transformers import AltCLIPConfig as RefConfig

    legacy = {
        "projection_dim": 1024,  # AltCLIP-m18
        "text_config": {"hidden_size": 64, "num_hidden_layers": 3, "vocab_size": 77},
        "text_config_dict": {"vocab_size": 500, "num_attention_heads": 8},
        "vision_config": {"hidden_size": 1024, "patch_size": 14, "intermediate_size": 4096},
        "vision_config_dict": {"num_hidden_layers": 3, "image_size": 112},
    }
    for d in (legacy, {"text_config": {"vocab_size": 77}, "vision_config": {"patch_size": 16}}, {}):
        ours, ref = config_from_dict(d), RefConfig(**d)
        for mine, theirs in ((ours.text, ref.text_config), (ours.vision, ref.vision_config)):
            for name in vars(mine):
                assert getattr(mine, name) == getattr(theirs, name), (d, name)
        assert ours.projection_dim == ref.projection_dim


def test_config_errors():
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        config_from_dict({"text_config": {"hidden_size": 100, "num_attention_heads": 16}})
    with pytest.raises(ValueError, match="unsupported hidden_act 'swish'"):
        config_from_dict({"vision_config": {"hidden_act": "swish"}})
    assert TextConfig().pad_token_id == 1 and VisionConfig().image_size == 224


def test_skipping_padding_changes_nothing_at_real_tokens(pair):
    """get_text_features runs the blocks on the real tokens only (Packing); the real tokens' states are unchanged."""
    _, ours = pair
    ids, mask = ragged_batch([40, 5, 2, 23])
    real = mask.bool()
    with torch.no_grad():
        full = ours.text_model(ids, mask)
        packed = ours.text_model(ids, mask, skip_padding=True)
    torch.testing.assert_close(packed.last_hidden_state[real], full.last_hidden_state[real], **F32)
    torch.testing.assert_close(ours.get_text_features(ids, mask), ours.text_projection(full.pooler_output), **F32)
