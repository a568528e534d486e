"""The documentation page's API (AltCLIPModel, AltCLIPProcessor, AltCLIPTextModel, AltCLIPVisionModel and the three
configs) against the reference, transformers' classes of the same names, on tiny random checkpoints.

The reference processor is transformers.AltCLIPProcessor built from CLIPImageProcessorPil (transformers 5.25's
CLIPImageProcessor needs torchvision, which is not installed) and XLMRobertaTokenizer.

Tolerances, float32: token ids and masks exact; pixels 1e-4 absolute (as tests/test_preprocess.py); hidden states
and embeddings 1e-5 absolute; probabilities 1e-4 absolute, the page's promise; logits 1e-4 (exp(logit_scale) times
a cosine, see tests/test_model.py).
"""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import altclip
import load_weights
from altclip import (AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, AltCLIPTextConfig, AltCLIPTextModel,
                     AltCLIPVisionConfig, AltCLIPVisionModel)
from helpers import reference_processor, save_checkpoint, tiny_model_folder, tiny_reference, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "cat.jpg"
F32 = dict(atol=1e-5, rtol=0)
PIXELS = dict(atol=1e-4, rtol=0)
PROBS = dict(atol=1e-4, rtol=0)
TEXTS = ["a photo of a cat", "a photo of a dog", "eine Katze auf dem Baum", "一张 猫 的 照片"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A checkpoint folder as the hub has it: config.json, model.safetensors, sentencepiece.bpe.model."""
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(folder):
    """The reference model and processor for `folder`."""
    import transformers

    model = transformers.AltCLIPModel.from_pretrained(folder).eval()
    processor = transformers.AltCLIPProcessor(image_processor=reference_processor(),
                                              tokenizer=transformers.XLMRobertaTokenizer.from_pretrained(folder))
    return model, processor


@pytest.fixture(scope="module")
def processor(folder):
    return AltCLIPProcessor.from_pretrained(folder)


def assert_same_inputs(ours, theirs):
    assert set(ours) == set(theirs)
    for key in theirs:
        if key == "pixel_values":
            torch.testing.assert_close(torch.as_tensor(np.asarray(ours[key])),
                                       torch.as_tensor(np.asarray(theirs[key])), **PIXELS)
        elif isinstance(theirs[key], list):  # return_tensors=None: lists, ragged without padding
            assert ours[key] == theirs[key], key
        elif isinstance(theirs[key], np.ndarray):
            assert type(ours[key]) is np.ndarray and ours[key].dtype == theirs[key].dtype
            assert ours[key].tolist() == theirs[key].tolist(), key
        else:
            assert torch.equal(ours[key], theirs[key]), key


# -----------------------------------------------------------------------------
# The page's example, with only the import line changed.


def test_the_pages_example_gives_the_references_probabilities(folder, reference):
    from altclip import AltCLIPModel, AltCLIPProcessor  # the only line that differs from the page

    model = AltCLIPModel.from_pretrained(folder)
    processor = AltCLIPProcessor.from_pretrained(folder)
    image = Image.open(CAT)
    inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt", padding=True)
    outputs = model(**inputs)
    probs = outputs.logits_per_image.softmax(dim=1)

    ref_model, ref_processor = reference
    ref_inputs = ref_processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt",
                               padding=True)
    assert_same_inputs(inputs, ref_inputs)
    with torch.no_grad():
        ref_probs = ref_model(**ref_inputs).logits_per_image.softmax(dim=1)
    torch.testing.assert_close(probs.detach(), ref_probs, **PROBS)
    assert not torch.allclose(ref_probs, torch.full_like(ref_probs, 0.5), atol=1e-3)  # a test that can fail


def test_the_pages_other_examples(folder, reference):
    """get_text_features / get_image_features and the towers, fed straight from the processor as the page does."""
    processor = AltCLIPProcessor.from_pretrained(folder)
    model = AltCLIPModel.from_pretrained(folder)
    texts = processor(text=["it's a cat", "it's a dog"], padding=True, return_tensors="pt")
    pixels = processor(images=Image.open(CAT), return_tensors="pt")
    ref = reference[0]
    with torch.no_grad():
        torch.testing.assert_close(model.get_text_features(**texts), ref.get_text_features(**texts).pooler_output,
                                   **F32)
        torch.testing.assert_close(model.get_image_features(**pixels),
                                   ref.get_image_features(**pixels).pooler_output, **F32)
        text = AltCLIPTextModel.from_pretrained(folder)(**texts)
        torch.testing.assert_close(text.pooler_output, ref.text_model(**texts).pooler_output, **F32)
        vision = AltCLIPVisionModel.from_pretrained(folder)(**pixels)
        torch.testing.assert_close(vision.pooler_output, ref.vision_model(**pixels).pooler_output, **F32)


def test_the_old_names_keep_working(folder):
    assert altclip.AltCLIP is AltCLIPModel
    model = load_weights.load_pretrained(folder)
    assert isinstance(model, AltCLIPModel)
    for ours, theirs in zip(model.state_dict().values(), AltCLIPModel.from_pretrained(folder).state_dict().values()):
        assert torch.equal(ours, theirs)


def test_altclip_imports_nothing_of_ours_and_the_loader_no_model():
    """altclip.py imports no module of ours at its top (the loader and tokenizer only when used), and load_weights.py
    knows no model class at import: no circle."""
    code = ("import sys, altclip\n"
            "assert not {'load_weights', 'tokenizer', 'cli', 'index'} & set(sys.modules), sorted(sys.modules)\n"
            "del sys.modules['altclip']\n"
            "import load_weights\n"
            "assert 'altclip' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -----------------------------------------------------------------------------
# The processor: outputs equal to the reference's, errors in one line.


@pytest.mark.parametrize("kwargs", [
    dict(return_tensors="pt", padding=True),
    dict(return_tensors="pt", padding="longest"),
    dict(return_tensors="np", padding="max_length", max_length=24),
    dict(return_tensors="pt", truncation=True, max_length=5, padding=True),
    dict(max_length=5),  # no truncation flag: the reference truncates at max_length, and so do we
    dict(),  # lists, each text its own length
    dict(padding=False, truncation=False),
])
def test_processor_text_equals_the_reference(processor, reference, kwargs):
    assert_same_inputs(processor(text=TEXTS, **kwargs), reference[1](text=TEXTS, **kwargs))
    assert_same_inputs(processor(text=TEXTS[2], **kwargs), reference[1](text=TEXTS[2], **kwargs))


def test_processor_images_equal_the_reference(processor, reference):
    image = Image.open(CAT)
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 150, 3), dtype=np.uint8))
    for images in (image, [image, wide], [wide]):
        for return_tensors in ("pt", "np", None):
            assert_same_inputs(processor(images=images, return_tensors=return_tensors),
                               reference[1](images=images, return_tensors=return_tensors))
    by_path = processor(images=[CAT, str(CAT)], return_tensors="pt")["pixel_values"]  # paths too
    torch.testing.assert_close(by_path, reference[1](images=[image, image], return_tensors="pt")["pixel_values"],
                               **PIXELS)
    array = processor(images=np.asarray(wide), return_tensors="pt").pixel_values  # and (H, W, 3) uint8 arrays
    torch.testing.assert_close(array, reference[1](images=wide, return_tensors="pt")["pixel_values"], **PIXELS)


def test_processor_both_and_its_parts(processor, reference):
    inputs = processor(text=TEXTS, images=Image.open(CAT), return_tensors="pt", padding=True)
    assert_same_inputs(inputs, reference[1](text=TEXTS, images=Image.open(CAT), return_tensors="pt", padding=True))
    assert inputs.input_ids is inputs["input_ids"]  # attributes, as the reference's BatchFeature has them
    assert processor.tokenizer(TEXTS)["input_ids"].tolist() == reference[1].tokenizer(TEXTS, padding=True)["input_ids"]
    torch.testing.assert_close(processor.image_processor(Image.open(CAT), return_tensors="pt")["pixel_values"],
                               reference[1].image_processor(Image.open(CAT), return_tensors="pt")["pixel_values"],
                               **PIXELS)
    for skip in (False, True):
        assert (processor.batch_decode(inputs.input_ids, skip_special_tokens=skip)
                == reference[1].batch_decode(inputs.input_ids, skip_special_tokens=skip))
        assert (processor.decode(inputs.input_ids[1], skip_special_tokens=skip)
                == reference[1].decode(inputs.input_ids[1], skip_special_tokens=skip))
    assert processor.decode(inputs.input_ids[0]) == reference[1].decode(inputs.input_ids[0])  # the same default


def test_processor_errors_name_the_input(processor, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    cases = [
        (dict(), ValueError, "needs text=, images= or both"),
        (dict(text=3), TypeError, "text must be a string or a list of strings, got int 3"),
        (dict(text=["a cat", None]), TypeError, r"got list \['a cat', None\]"),
        (dict(text=[]), ValueError, "text is an empty list"),
        (dict(images=3), TypeError, "got int 3"),
        (dict(images=[Image.open(CAT), {"x": 1}]), TypeError, r"got dict \{'x': 1\}"),
        (dict(images=np.zeros((4, 4), np.float32)), TypeError, r"got ndarray of shape \(4, 4\), float32"),
        (dict(images=not_an_image), ValueError, f"cannot open image '{re.escape(str(not_an_image))}'"),
        (dict(text="a cat", padding="both"), ValueError, "padding must be .* got 'both'"),
        (dict(text=["a", "a photo of a cat"], return_tensors="pt"), ValueError, "different lengths .* padding=True"),
        (dict(text="a cat", return_tensors="tf"), ValueError, "return_tensors must be .* got 'tf'"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            processor(**kwargs)
        assert "\n" not in str(caught.value), kwargs


def test_processor_from_a_folder_with_only_the_sentencepiece_model(tmp_path):
    """BAAI/AltCLIP-m9 ships sentencepiece.bpe.model and no tokenizer.json (nor the small JSON files)."""
    import transformers

    train_sentencepiece(tmp_path)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentencepiece.bpe.model"]
    ours = AltCLIPProcessor.from_pretrained(tmp_path)(text=TEXTS, return_tensors="pt", padding=True)
    theirs = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)(TEXTS, return_tensors="pt", padding=True)
    assert_same_inputs(ours, dict(theirs))


def test_processor_reads_the_checkpoints_image_size(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"shortest_edge": 30}, "crop_size": 30}')
    train_sentencepiece(tmp_path)
    assert AltCLIPProcessor.from_pretrained(tmp_path)(images=Image.open(CAT)).pixel_values[0].shape == (3, 30, 30)
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"shortest_edge": 256}, "crop_size": 224}')
    with pytest.raises(ValueError, match="size .* crop_size .* only CLIP's recipe"):
        AltCLIPProcessor.from_pretrained(tmp_path)


# -----------------------------------------------------------------------------
# Each tower alone, from a full checkpoint.


def ragged(vocab, lengths=(7, 3, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.ones(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, vocab, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = 0, 2
    return ids, (ids != 1).long()


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded-safetensors"])
def test_text_tower_from_a_full_checkpoint(tmp_path, monkeypatch, fmt):
    ref = tiny_reference(seed=1)
    folder = save_checkpoint(ref, tmp_path, fmt=fmt, legacy=True)
    read = []
    real = load_weights.read_tensors
    monkeypatch.setattr(load_weights, "read_tensors", lambda *a: read.append(real(*a)) or read[-1])
    model = AltCLIPTextModel.from_pretrained(folder)
    assert read and all(n.startswith("text_model.") for tensors in read for n in tensors)  # the vision side: unread
    ids, mask = ragged(ref.config.text_config.vocab_size)
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), ref.text_model(input_ids=ids, attention_mask=mask)
    assert ours.last_hidden_state.shape == (3, 12, ref.config.text_config.project_dim)
    real_tokens = mask.bool()  # padded rows are computed but never used, by either side
    torch.testing.assert_close(ours.last_hidden_state[real_tokens], theirs.last_hidden_state[real_tokens], **F32)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, **F32)
    torch.testing.assert_close(ours.pooler_output, ours.last_hidden_state[:, 0], atol=0, rtol=0)
    read.clear()
    with_projection = altclip.AltCLIPTextModelWithProjection.from_pretrained(folder)  # what a search loads
    assert {n.split(".")[0] for tensors in read for n in tensors} == {"text_model", "text_projection"}
    with torch.no_grad():
        torch.testing.assert_close(with_projection.get_text_features(ids, mask),
                                   ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, **F32)


def test_the_text_towers_embedding_table_is_mapped_not_read(folder, monkeypatch):
    read = []
    real = load_weights.read_tensors
    monkeypatch.setattr(load_weights, "read_tensors", lambda *a: read.append(real(*a)) or read[-1])
    model = AltCLIPTextModel.from_pretrained(folder)
    mapped = read[0]["text_model.roberta.embeddings.word_embeddings.weight"]
    assert model.text_model.embeddings.word_embeddings.weight.data_ptr() == mapped.data_ptr()  # the mapping itself


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_vision_tower_from_a_full_checkpoint(tmp_path, monkeypatch, fmt):
    ref = tiny_reference(seed=2)
    folder = save_checkpoint(ref, tmp_path, fmt=fmt)
    read = []
    real = load_weights.read_tensors
    monkeypatch.setattr(load_weights, "read_tensors", lambda *a: read.append(real(*a)) or read[-1])
    model = AltCLIPVisionModel.from_pretrained(folder)
    assert read and all(n.startswith("vision_model.") for tensors in read for n in tensors)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(pixels), ref.vision_model(pixel_values=pixels)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, **F32)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, **F32)


@pytest.mark.parametrize("native", [True, False])
def test_a_tower_in_bfloat16_warns_where_it_runs_emulated(folder, monkeypatch, native):
    """As load_pretrained does; the CPU class without native bfloat16 (AVX2) is simulated."""
    import warnings

    from altclip_kernels import cpu

    monkeypatch.setattr(cpu, "native", lambda dtype: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AltCLIPTextModel.from_pretrained(folder, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert len([w for w in caught if issubclass(w.category, cpu.EmulatedDtypeWarning)]) == (0 if native else 1)


def test_a_tower_missing_from_the_checkpoint_fails_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_checkpoint(tiny_reference(), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["text_model.pre_LN.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(load_weights.CheckpointError, match="missing .* text_model.ln_out.weight"):
        AltCLIPTextModel.from_pretrained(folder)
    AltCLIPVisionModel.from_pretrained(folder)  # the other tower does not need it
    save_file({n: t for n, t in tensors.items() if not n.startswith("text_model.")}, folder / "model.safetensors")
    with pytest.raises(load_weights.CheckpointError, match="no tensor under 'text_model.'"):
        AltCLIPTextModel.from_pretrained(folder)


# -----------------------------------------------------------------------------
# Configs.

# transformers' own AltCLIP tests (tests/models/altclip/test_modeling_altclip.py): odd sizes everywhere.
REFERENCE_TEST_TEXT = dict(vocab_size=99, hidden_size=32, project_dim=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=512)
REFERENCE_TEST_VISION = dict(image_size=30, patch_size=2, num_channels=3, hidden_size=32, projection_dim=32,
                             num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def test_configs_take_the_references_keywords():
    from transformers import AltCLIPConfig as RefConfig

    text, vision = AltCLIPTextConfig(**REFERENCE_TEST_TEXT), AltCLIPVisionConfig(**REFERENCE_TEST_VISION)
    for ours in (AltCLIPConfig.from_text_vision_configs(text, vision, projection_dim=64),
                 AltCLIPConfig.from_text_vision_configs(REFERENCE_TEST_TEXT, REFERENCE_TEST_VISION, projection_dim=64),
                 AltCLIPConfig(text_config=REFERENCE_TEST_TEXT, vision_config=vision, projection_dim=64)):
        ref = RefConfig(text_config=REFERENCE_TEST_TEXT, vision_config=REFERENCE_TEST_VISION, projection_dim=64)
        for mine, theirs in ((ours.text_config, ref.text_config), (ours.vision_config, ref.vision_config)):
            for name in vars(mine):
                assert getattr(mine, name) == getattr(theirs, name), name
        assert (ours.projection_dim, ours.logit_scale_init_value) == (ref.projection_dim, ref.logit_scale_init_value)
        assert ours.text is ours.text_config and ours.vision is ours.vision_config
    with pytest.raises(TypeError, match="unexpected keyword argument 'vocab'"):
        AltCLIPConfig(text_config=dict(vocab=5))
    with pytest.raises(TypeError, match="expected a AltCLIPVisionConfig or a dict of its fields, got AltCLIPTextConfig"):
        AltCLIPConfig(vision_config=text)


def test_the_reference_tests_odd_sizes_build_and_equal_the_reference(tmp_path):
    """Image 30 px in 2 px patches, intermediate size 37, vocabulary 99, projection 64: built from the configs,
    loaded from the reference's weights, every class equals its reference."""
    import transformers

    torch.manual_seed(0)
    ref = transformers.AltCLIPModel(transformers.AltCLIPConfig(
        text_config=REFERENCE_TEST_TEXT, vision_config=REFERENCE_TEST_VISION, projection_dim=64)).eval()
    with torch.no_grad():
        for p in ref.parameters():  # away from the default init (identity LayerNorms, zero biases)
            p.add_(torch.randn_like(p) * 0.05)
    folder = save_checkpoint(ref, tmp_path)
    config = AltCLIPConfig.from_text_vision_configs(AltCLIPTextConfig(**REFERENCE_TEST_TEXT),
                                                    AltCLIPVisionConfig(**REFERENCE_TEST_VISION), projection_dim=64)
    built = AltCLIPModel(config)
    assert ({n: p.shape for n, p in built.named_parameters()}
            == {n: p.shape for n, p in AltCLIPModel.from_pretrained(folder).named_parameters()})
    ids, mask = ragged(99, lengths=(7, 5, 2))
    pixels = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = (AltCLIPModel.from_pretrained(folder)(input_ids=ids, attention_mask=mask, pixel_values=pixels),
                        ref(input_ids=ids, attention_mask=mask, pixel_values=pixels))
        torch.testing.assert_close(ours.logits_per_image, theirs.logits_per_image, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.text_embeds, theirs.text_embeds, **F32)
        text = AltCLIPTextModel.from_pretrained(folder)(ids, attention_mask=mask)
        torch.testing.assert_close(text.pooler_output, ref.text_model(input_ids=ids, attention_mask=mask).pooler_output,
                                   **F32)
        vision = AltCLIPVisionModel.from_pretrained(folder)(pixels)
        torch.testing.assert_close(vision.last_hidden_state, ref.vision_model(pixel_values=pixels).last_hidden_state,
                                   **F32)


def test_projection_1024_loads_and_equals_the_reference(tmp_path):
    """BAAI/AltCLIP-m18's projection_dim."""
    ref = tiny_reference(seed=3, projection_dim=1024)
    model = AltCLIPModel.from_pretrained(save_checkpoint(ref, tmp_path, legacy=True))
    assert model.config.projection_dim == 1024 and model.text_projection.weight.shape == (1024, 48)
    ids, mask = ragged(1000)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = (model(input_ids=ids, attention_mask=mask, pixel_values=pixels),
                        ref(input_ids=ids, attention_mask=mask, pixel_values=pixels))
        torch.testing.assert_close(ours.image_embeds, theirs.image_embeds, **F32)
        torch.testing.assert_close(ours.text_embeds, theirs.text_embeds, **F32)
        torch.testing.assert_close(ours.logits_per_image, theirs.logits_per_image, atol=1e-4, rtol=0)
        # transformers 5 returns the features as an output object's pooler_output
        torch.testing.assert_close(model.get_text_features(ids, mask),
                                   ref.get_text_features(ids, mask).pooler_output, **F32)


# -----------------------------------------------------------------------------
# The search command line uses the text side alone when every image is already in the index.


def test_a_search_with_every_image_indexed_reads_the_text_side_alone(capsys, folder, tmp_path, monkeypatch):
    import json
    import shutil

    import cli

    def run(capsys, *argv):
        code = cli.main([str(a) for a in argv])
        return (code, *capsys.readouterr())

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(ROOT / "examples" / name, photos / name)
    common = ["--model", folder, "--index", tmp_path / "index.sqlite", "--json", "-v"]
    code, first, err = run(capsys, photos, "--search", "a photo of a cat", *common)
    assert code == 0 and "0 image(s) from the index, 2 embedded" in err, err
    read = []
    real = load_weights.read_tensors
    monkeypatch.setattr(load_weights, "read_tensors", lambda *a: read.append(real(*a)) or read[-1])
    code, second, err = run(capsys, photos, "--search", "a photo of a cat", *common)
    assert code == 0 and "2 image(s) from the index, 0 embedded" in err and "text tower loaded alone" in err, err
    names = {n for tensors in read for n in tensors}
    assert names and all(n.startswith(("text_model.", "text_projection.")) for n in names)
    assert "text_projection.weight" in names
    first, second = json.loads(first), json.loads(second)
    assert [r["image"] for r in first] == [r["image"] for r in second]
    np.testing.assert_allclose([r["score"] for r in second], [r["score"] for r in first], atol=1e-6, rtol=0)
    read.clear()
    code, like, err = run(capsys, photos, "--like", photos / "cat.jpg", *common)
    assert code == 0 and read == [] and [r["image"] for r in json.loads(like)] == [str(photos / "coffee.jpg")], err
