"""load_weights.py: every checkpoint format loads to the same model; every bad checkpoint fails loudly and by name."""
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import load_weights
from helpers import reference_state_dict, save_checkpoint, tiny_reference
from load_weights import CheckpointError, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
LOGITS = dict(atol=1e-4, rtol=0)  # logits are exp(logit_scale) = 100 times a cosine: 1e-6 on the cosine, float32


@pytest.fixture(scope="module")
def ref():
    return tiny_reference(seed=1)


def logits(model, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (2, 9), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    px = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px).logits_per_image


@pytest.mark.parametrize("fmt", ["safetensors", "sharded-safetensors", "bin", "sharded-bin"])
@pytest.mark.parametrize("legacy", [False, True], ids=["v5-layout", "legacy-layout"])
def test_every_format_loads_to_the_reference(ref, tmp_path, fmt, legacy):
    folder = save_checkpoint(ref, tmp_path, fmt=fmt, legacy=legacy)
    if legacy:  # the stale text_config/vision_config would build a model of the wrong size
        assert json.loads((folder / "config.json").read_text())["vision_config"]["patch_size"] == 32
    model = load_pretrained(folder)
    assert not model.training
    torch.testing.assert_close(logits(model), logits(ref), **LOGITS)


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_is_cast_to_the_requested_dtype(ref, tmp_path, stored):
    folder = save_checkpoint(ref, tmp_path, dtype=stored)
    model = load_pretrained(folder, dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # Exactly the reference rounded to the stored dtype: the cast happens once, at load.
    rounded = tiny_reference(seed=1)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(stored).float())
    torch.testing.assert_close(logits(model), logits(rounded), **LOGITS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_in_half_precision(ref, tmp_path, dtype):
    model = load_pretrained(save_checkpoint(ref, tmp_path), dtype=dtype)
    assert {p.dtype for n, p in model.named_parameters() if n != "logit_scale"} == {dtype}
    assert model.logit_scale.dtype == torch.float32  # exp(4.6052) = 100 would round to 98.9 in bfloat16


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_fused_qkv_is_q_then_k_then_v_in_every_block(ref, tmp_path, fmt):
    """Every block of both towers, weight and bias: exactly the checkpoint's own q, k and v, concatenated in order."""
    model = load_pretrained(save_checkpoint(ref, tmp_path, fmt=fmt))
    sd = reference_state_dict(ref)
    towers = [(model.vision_model, "vision_model.encoder.layers.{}.self_attn.{}_proj", ("q", "k", "v")),
              (model.text_model, "text_model.roberta.encoder.layer.{}.attention.self.{}", ("query", "key", "value"))]
    checked = 0
    for tower, name, parts in towers:
        assert len(tower.blocks) == 2
        for i, block in enumerate(tower.blocks):
            for w in ("weight", "bias"):
                want = torch.cat([sd[f"{name.format(i, p)}.{w}"] for p in parts])
                assert torch.equal(getattr(block.attn.qkv, w), want), (name.format(i, "qkv"), w)
                checked += 1
    assert checked == 8


def test_dropped_keys_are_only_the_listed_ones(ref, tmp_path):
    """The DROPPED keys (legacy buffers, RoBERTa's pooler) are ignored: the model loads, equals the reference and holds
    none of them. A key that only resembles them is not dropped but refused, by name."""
    from safetensors.torch import save_file

    folder = save_checkpoint(ref, tmp_path)
    sd = reference_state_dict(ref, legacy_buffers=True)  # position_ids (both towers), token_type_ids
    g = torch.Generator().manual_seed(0)
    sd["text_model.roberta.pooler.dense.weight"] = torch.randn(64, 64, generator=g)
    sd["text_model.roberta.pooler.dense.bias"] = torch.randn(64, generator=g)
    listed = [n for n in sd if any(d.match(n) for d in load_weights._DROPPED)]
    assert len(listed) == 5 and len(load_weights.DROPPED) == 3
    save_file(sd, folder / "model.safetensors")
    model = load_pretrained(folder)
    torch.testing.assert_close(logits(model), logits(ref), **LOGITS)
    held = set(model.state_dict())
    assert not [n for n in held if re.search(r"position_ids|token_type_ids|pooler", n)], held
    assert held == {n for n, _ in model.named_parameters()}  # no buffers at all, so nothing dropped sneaks back

    unlisted = {"text_model.roberta.pooler_dense.weight": torch.zeros(64, 64),  # not under `pooler.`
                "vision_model.pooler.dense.weight": torch.zeros(64, 64),  # the image tower has no such pooler
                "text_model.roberta.embeddings.position_ids_old": torch.arange(514)[None],
                "text_model.roberta.embeddings.token_type_ids.weight": torch.zeros(1, 64)}
    for name, t in unlisted.items():
        save_file({**sd, name: t}, folder / "model.safetensors")
        with pytest.raises(CheckpointError, match=rf"1 unexpected tensor.*: {re.escape(name)}$"):
            load_pretrained(folder)


def test_model_family_other_projection_dim(tmp_path):
    """AltCLIP-m18 has projection_dim 1024: the same code path, only the heads change shape."""
    ref = tiny_reference(seed=2, projection_dim=40)
    model = load_pretrained(save_checkpoint(ref, tmp_path))
    assert model.visual_projection.weight.shape == (40, 64)
    torch.testing.assert_close(logits(model), logits(ref), **LOGITS)


# --- bad checkpoints ------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs `touch marker`: what a malicious pytorch_model.bin can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def test_pickle_with_code_is_refused_and_never_runs(ref, tmp_path):
    folder = save_checkpoint(ref, tmp_path / "ckpt", fmt="bin")
    marker = tmp_path / "pwned"
    sd = reference_state_dict(ref)
    sd["logit_scale"] = Payload(marker)
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refused to load .*pytorch_model\.bin.*could run code"):
        load_pretrained(folder)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(marker)))  # control: the payload is real, plain unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize("fmt,name", [("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin")])
def test_truncated_file_is_named(ref, tmp_path, fmt, name):
    folder = save_checkpoint(ref, tmp_path, fmt=fmt)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read .*{name.replace('.', '[.]')}.*(truncated|corrupt)"):
        load_pretrained(folder)


def test_config_that_contradicts_the_tensors(ref, tmp_path):
    folder = save_checkpoint(ref, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vision_config"]["patch_size"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"vision_model\.embeddings\.patch_embedding\.weight has shape "
                                              r"\(64, 3, 14, 14\).*vision config.*\(64, 3, 16, 16\)"):
        load_pretrained(folder)


def test_config_with_fewer_layers_names_the_unexpected_tensors(ref, tmp_path):
    folder = save_checkpoint(ref, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*text_model\.roberta\.encoder\.layer\.1\."):
        load_pretrained(folder)


def test_missing_and_unknown_tensors_are_named(ref, tmp_path):
    from safetensors.torch import save_file

    folder = save_checkpoint(ref, tmp_path)
    sd = reference_state_dict(ref)
    del sd["vision_model.post_layernorm.weight"]
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing.*vision_model\.ln_post\.weight"):
        load_pretrained(folder)
    sd = reference_state_dict(ref)
    sd["text_model.some_new_head.weight"] = torch.zeros(3)
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected.*text_model\.some_new_head\.weight"):
        load_pretrained(folder)
    sd = reference_state_dict(ref)
    del sd["text_model.roberta.encoder.layer.0.attention.self.key.weight"]
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"needs q, k and v.*attention\.self\.query\.weight"):
        load_pretrained(folder)


def test_missing_things(ref, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no weights: expected one of model\.safetensors"):
        load_pretrained(tmp_path / "empty")
    folder = save_checkpoint(ref, tmp_path / "noconfig")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_pretrained(folder)
    folder = save_checkpoint(ref, tmp_path / "shards", fmt="sharded-safetensors")
    next(folder.glob("model-00002-*")).unlink()
    with pytest.raises(CheckpointError, match=r"names a shard model-00002-of-00002\.safetensors that is missing"):
        load_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"cannot use .*config\.json"):
        load_pretrained(folder)


def test_offline_without_cache_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(OSError, match=r"cannot reach the Hugging Face Hub to download BAAI/AltCLIP.*--model"):
        load_pretrained("BAAI/AltCLIP")


class FakeHub:
    """Stands in for hf_hub_download: serves files of a local folder, records what was asked for."""

    def __init__(self, folder):
        self.folder, self.asked = folder, []

    def __call__(self, repo_id, filename, **kw):
        from huggingface_hub.errors import EntryNotFoundError

        self.asked.append(filename)
        if not (self.folder / filename).exists():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(self.folder / filename)


def test_hub_download_fetches_one_format_preferring_safetensors(ref, tmp_path, monkeypatch):
    folder = save_checkpoint(ref, tmp_path / "repo", fmt="bin")
    save_checkpoint(ref, folder, fmt="sharded-safetensors")
    hub = FakeHub(folder)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", hub)
    model = load_pretrained("someone/tiny-altclip")
    assert hub.asked == ["config.json", "model.safetensors", "model.safetensors.index.json",
                         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    torch.testing.assert_close(logits(model), logits(ref), **LOGITS)


def test_to_safetensors_converts_a_legacy_bin(ref, tmp_path):
    src = save_checkpoint(ref, tmp_path / "src", fmt="bin", legacy=True)
    (src / "sentencepiece.bpe.model").write_bytes(b"spm")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "load_weights.py", str(src), "--to-safetensors", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "sentencepiece.bpe.model"]
    torch.testing.assert_close(logits(load_pretrained(out)), logits(ref), **LOGITS)
    from transformers import AltCLIPModel  # the converted folder still loads in the reference
    torch.testing.assert_close(logits(AltCLIPModel.from_pretrained(out).eval()), logits(ref), **LOGITS)


def test_command_line_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "load_weights.py", str(tmp_path / "missing")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_runtime_code_never_imports_transformers():
    """altclip.py, load_weights.py, tokenizer.py and altclip_kernels/ import and run with transformers blocked."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'transformers': raise ImportError('transformers is test-only')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import altclip, load_weights\n"
        "import importlib.util\n"
        "for mod in ('tokenizer', 'kernels'):\n"
        "    if importlib.util.find_spec(mod): importlib.import_module(mod)\n"
        "m = altclip.AltCLIP(altclip.config_from_dict({'text_config': {'vocab_size': 10, 'hidden_size': 16, "
        "'num_hidden_layers': 1, 'num_attention_heads': 2, 'intermediate_size': 8}, 'vision_config': {"
        "'hidden_size': 16, 'num_hidden_layers': 1, 'num_attention_heads': 2, 'intermediate_size': 8}}))\n"
        "assert not any(k.split('.')[0] == 'transformers' for k in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sources = [ROOT / "altclip.py", ROOT / "load_weights.py", ROOT / "tokenizer.py", *ROOT.glob("altclip_kernels/*.py")]
    for path in sources:
        if path.exists():
            assert "import transformers" not in path.read_text() and "from transformers" not in path.read_text(), path


def test_fused_parts_are_read_from_the_second_mapping(ref, tmp_path):
    """load_pretrained fuses q/k/v from a second read of the file, dropped afterwards: its pages leave memory."""
    from altclip import AltCLIP

    weights = save_checkpoint(ref, tmp_path) / "model.safetensors"
    tensors, second = load_weights.read_tensors(weights), load_weights.read_tensors(weights)
    second = {n: t + 1 for n, t in second.items()}  # distinguishable
    with torch.device("meta"):
        model = AltCLIP(load_weights.load_config(weights.parent))
    state = load_weights.convert(tensors, model, torch.float32, fuse_from=second)
    p = "vision_model.encoder.layers.0.self_attn"
    torch.testing.assert_close(state["vision_model.blocks.0.attn.qkv.bias"],
                               torch.cat([second[f"{p}.{x}_proj.bias"] for x in "qkv"]))
    torch.testing.assert_close(state["vision_model.blocks.0.attn.proj.bias"], tensors[f"{p}.out_proj.bias"])


class Recording(dict):
    """A read_tensors mapping that remembers which tensors were looked up by name (convert walks the main mapping
    with items() and looks up the fused parts by name)."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.looked_up = set()

    def __getitem__(self, name):
        self.looked_up.add(name)
        return super().__getitem__(name)


@pytest.mark.parametrize("fmt,mappings", [("bin", 2), ("sharded-bin", 2), ("safetensors", 1)])
def test_load_pretrained_fuses_a_zip_pickle_from_a_second_mapping(ref, tmp_path, monkeypatch, fmt, mappings):
    """The memory claim, end to end: a zip pickle is mapped twice, q/k/v are fused from the second mapping only, and
    every other tensor is the first mapping's own memory (not a copy). Safetensors map each tensor on their own: one
    read is enough."""
    folder = save_checkpoint(ref, tmp_path, fmt=fmt)
    weights = load_weights.resolve(folder)[1]
    calls, read = [], load_weights.read_tensors

    def spy(path, *keep):
        result = read(path, *keep)
        if Path(path) == weights:  # not the shards a sharded checkpoint's index reads on the way
            calls.append(Recording(result))
            return calls[-1]
        return result
    monkeypatch.setattr(load_weights, "read_tensors", spy)
    model = load_pretrained(folder)

    assert len(calls) == mappings
    qkv = {n for n in calls[0] if re.search(r"\.(q_proj|k_proj|v_proj|query|key|value)\.", n)}
    assert len(qkv) == 2 * 2 * 3 * 2  # 2 towers x 2 blocks x q, k, v x weight, bias
    assert calls[-1].looked_up == qkv  # the fused parts, all of them, and nothing else, from the last mapping
    if mappings == 2:
        assert not calls[0].looked_up  # the first mapping is only walked, never asked for a q/k/v
    first = dict(calls[0])
    for ours, theirs in [(model.vision_model.blocks[1].attn.proj.weight, "vision_model.encoder.layers.1.self_attn."
                                                                         "out_proj.weight"),
                         (model.text_model.blocks[0].mlp.fc1.weight, "text_model.roberta.encoder.layer.0."
                                                                     "intermediate.dense.weight"),
                         (model.text_model.embeddings.word_embeddings.weight,
                          "text_model.roberta.embeddings.word_embeddings.weight")]:
        assert ours.data_ptr() == first[theirs].data_ptr(), theirs  # mapped, not copied
    mapped = {t.data_ptr() for c in calls for t in dict(c).values()}
    assert all(block.attn.qkv.weight.data_ptr() not in mapped for block in model.text_model.blocks)  # new memory
    torch.testing.assert_close(logits(model), logits(ref), **LOGITS)


def hub_cache(monkeypatch, tmp_path, offline: bool):
    """An empty huggingface_hub cache in tmp_path (its settings are read at import, so patch the constants)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", offline)
    return cache


def test_cached_bin_loads_without_the_network(ref, tmp_path, monkeypatch):
    """BAAI/AltCLIP's hub repo has only pytorch_model.bin: once cached, it loads offline, with no connection tried."""
    import socket

    cache = hub_cache(monkeypatch, tmp_path, offline=False)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-altclip"
    save_checkpoint(ref, repo / "snapshots" / commit, fmt="bin", legacy=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network although the model is cached")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    torch.testing.assert_close(logits(load_pretrained("someone/tiny-altclip")), logits(ref), **LOGITS)


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE, but no network: one quick probe, then the clear error (no retries with back-off)."""
    import socket
    import time

    hub_cache(monkeypatch, tmp_path, offline=False)
    tries = []

    def unreachable(address, *args, **kwargs):
        tries.append(address)
        raise OSError("Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"cannot reach the Hugging Face Hub to download BAAI/AltCLIP.*--model"):
        load_pretrained("BAAI/AltCLIP")
    assert len(tries) == 1 and time.perf_counter() - start < 2


# --- saving: our model → BAAI/AltCLIP's layout ------------------------------------------------------------------


def ours_random(seed=3):
    """Our AltCLIP at a small, non-default geometry (patch 32, odd widths, its own eps), every weight perturbed."""
    from altclip import AltCLIP, config_from_dict

    cfg = config_from_dict({
        "text_config": dict(vocab_size=700, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                            num_attention_heads=3, max_position_embeddings=40, project_dim=56, layer_norm_eps=1e-6),
        "vision_config": dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5,
                              image_size=224, patch_size=32, layer_norm_eps=1e-6),
        "projection_dim": 24, "logit_scale_init_value": 2.0})
    torch.manual_seed(seed)
    model = AltCLIP(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def small_logits(model):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 700, (3, 11), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    ids[2, 7:], mask[2, 7:] = 1, 0  # one padded text
    ids[2, 6] = 2
    px = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, pixel_values=px).logits_per_image


def test_saved_model_loads_in_the_reference_with_equal_logits(tmp_path):
    from transformers import AltCLIPModel

    ours = ours_random()
    folder = load_weights.save_pretrained(ours, tmp_path / "ckpt")
    ref, info = AltCLIPModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mis-shaped: no weight left at random
    ref.eval()
    assert ref.config.vision_config.patch_size == 32 and ref.config.text_config.layer_norm_eps == 1e-6
    torch.testing.assert_close(small_logits(ref), small_logits(ours), atol=1e-5, rtol=0)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors",
                                                        "preprocessor_config.json"]


def test_saved_preprocessor_config_matches_our_preprocessing(tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from altclip import preprocess

    folder = load_weights.save_pretrained(ours_random(), tmp_path)
    image = Image.fromarray(torch.randint(0, 256, (300, 180, 3), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(0)).numpy())
    theirs = CLIPImageProcessorPil.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(theirs, preprocess(image), atol=1e-5, rtol=0)


def test_save_then_load_pretrained_is_bit_identical(tmp_path):
    ours = ours_random()
    loaded = load_pretrained(load_weights.save_pretrained(ours, tmp_path))
    assert loaded.config == ours.config
    mine, back = ours.state_dict(), loaded.state_dict()
    assert mine.keys() == back.keys()
    for name in mine:
        assert torch.equal(mine[name], back[name]), name


def test_save_names_a_parameter_it_cannot_map(tmp_path):
    ours = ours_random()
    ours.text_model.extra_head = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"no checkpoint name.*text_model\.extra_head\.weight"):
        load_weights.save_pretrained(ours, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
