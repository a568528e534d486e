"""altclip.preprocess against the reference CLIPImageProcessor (PIL backend) with BAAI/AltCLIP's settings.

Images are generated with fixed seeds (noise over gradients, so resampling and cropping errors show) in every PIL
mode a photo or a web image comes in, and in awkward sizes: tiny, odd, very wide or tall, large.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from altclip import ImageError, load_image, preprocess
from helpers import BAAI_MEAN, BAAI_STD, reference_processor

ATOL = 1e-4  # the reference computes in float64 then float32; we compute in float32

@pytest.fixture(scope="module")
def reference():
    return reference_processor()


def test_reference_statistics_are_openai_clips():
    """The values copied from BAAI's config are OpenAI CLIP's, as transformers ships them."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    assert (BAAI_MEAN, BAAI_STD) == (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))


def reference_pixels(reference, image):
    return reference(image, return_tensors="pt")["pixel_values"]


def rgb_array(w, h, seed=0):
    """(h, w, 3) uint8: a diagonal colour gradient plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), 255 * (xx + yy) / max(w + h - 2, 1)], -1)
    return np.clip(base + 40 * rng.standard_normal((h, w, 3), dtype=np.float32), 0, 255).astype(np.uint8)


def alpha_array(w, h, seed=1):
    """(h, w) uint8 alpha: fully transparent left third, a ramp, fully opaque right third, with noise."""
    rng = np.random.default_rng(seed)
    ramp = np.clip((np.arange(w) / max(w - 1, 1) - 1 / 3) * 3, 0, 1) * 255
    alpha = np.clip(ramp[None, :] + rng.normal(0, 20, (h, w)), 0, 255)
    alpha[:, : w // 3] = 0
    return alpha.astype(np.uint8)


def png_roundtrip(image, **save_args):
    """Save and reopen as PNG, so `transparency` info is set the way a real file sets it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save_args)
    return Image.open(io.BytesIO(buf.getvalue()))


def make(mode, w=97, h=61, seed=0):
    rgb = Image.fromarray(rgb_array(w, h, seed))
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb_array(w, h, seed), alpha_array(w, h)]))
    if mode == "LA":
        return Image.fromarray(np.dstack([rgb_array(w, h, seed)[..., 0], alpha_array(w, h)]), mode="LA")
    if mode == "PA":
        return make("LA", w, h, seed).convert("PA")
    if mode in ("L", "1", "CMYK", "YCbCr", "HSV", "I", "F"):
        return rgb.convert(mode)
    if mode == "I;16":
        wide = rgb_array(w, h, seed)[..., 0].astype(np.uint16) * 300  # values up to 76500 → clipped to 65535
        return Image.fromarray(np.minimum(wide, 65535).astype(np.uint16))
    if mode == "P":
        return rgb.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
    if mode == "P+transparency":  # GIF-style: one palette entry is fully transparent
        p = rgb.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
        return png_roundtrip(p, transparency=int(np.asarray(p)[0, 0]))
    if mode == "P+alpha-palette":  # PNG tRNS with an alpha per palette entry
        p = rgb.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
        return png_roundtrip(p, transparency=bytes(range(0, 256, 4)))
    if mode == "L+transparency":  # PNG tRNS colour key on a grey image
        l = rgb.convert("L")
        return png_roundtrip(l, transparency=int(np.asarray(l)[0, 0]))
    if mode == "RGB+transparency":  # PNG tRNS colour key on an RGB image
        return png_roundtrip(rgb, transparency=tuple(int(v) for v in np.asarray(rgb)[0, 0]))
    raise ValueError(mode)


MODES = ["RGB", "RGBA", "LA", "PA", "L", "1", "P", "P+transparency", "P+alpha-palette", "L+transparency",
         "RGB+transparency", "CMYK", "YCbCr", "HSV", "I", "F", "I;16"]


@pytest.mark.parametrize("mode", MODES)
def test_modes_match_reference(reference, mode):
    image = make(mode)
    torch.testing.assert_close(preprocess(image), reference_pixels(reference, image), atol=ATOL, rtol=0)


# (width, height): tiny (smaller than one patch, and than the 56 px CLIP's old resize floor), odd, square,
# one pixel over the crop, very wide and very tall (the rounded-down long side: 500×60 → 1866, not 1867), large.
SIZES = [(1, 1), (13, 40), (40, 13), (2, 55), (55, 55), (223, 225), (224, 224), (225, 224), (500, 60), (60, 500),
         (333, 500), (1500, 1000), (1000, 1500)]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P+transparency"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_sizes_match_reference(reference, mode, size):
    image = make(mode, *size, seed=size[0] * 7 + size[1])
    torch.testing.assert_close(preprocess(image), reference_pixels(reference, image), atol=ATOL, rtol=0)


def test_other_sizes():
    image = make("RGB", 300, 200)
    assert preprocess(image, size=112).shape == (1, 3, 112, 112)
    assert preprocess(image, size=336).shape == (1, 3, 336, 336)


def test_transparent_pixels_become_white():
    # Fully transparent pixels (the left third of RGBA images) hide random colours; the reference shows them white.
    image = make("RGBA", 224, 224)
    x = preprocess(image)[0]  # (3, 224, 224)
    white = (1 - torch.tensor(BAAI_MEAN)) / torch.tensor(BAAI_STD)
    torch.testing.assert_close(x[:, 10:200, 5:60], white.view(3, 1, 1).expand(3, 190, 55), atol=ATOL, rtol=0)
    dropped = preprocess(image.convert("RGB"))[0]  # PIL's plain conversion keeps the hidden colours
    assert (dropped[:, :, :60] - x[:, :, :60]).abs().max() > 1


def test_batch_of_images_and_paths(reference, tmp_path):
    images = [make("RGB", 300, 200, seed=1), make("L", 90, 120, seed=2)]
    images[0].save(tmp_path / "a.png")
    x = preprocess([tmp_path / "a.png", str(tmp_path / "a.png"), images[1]])
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], reference_pixels(reference, images[0])[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(x[1], x[0], atol=0, rtol=0)
    torch.testing.assert_close(x[2], reference_pixels(reference, images[1])[0], atol=ATOL, rtol=0)


# -----------------------------------------------------------------------------
# EXIF orientation: applied to files, not to images already in memory.


def jpeg_with_orientation(path, pixels, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation, transpose", [
    (3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation_applied_to_paths(tmp_path, orientation, transpose):
    path = tmp_path / f"photo{orientation}.jpg"
    jpeg_with_orientation(path, rgb_array(160, 90, seed=orientation), orientation)
    stored = Image.open(path)  # the pixels as stored in the file, sideways
    stored.load()
    assert stored.size == (160, 90)
    upright = stored.transpose(transpose)  # what the tag tells a viewer to do, written out by hand
    assert load_image(path).size == upright.size
    torch.testing.assert_close(preprocess(path), preprocess(upright), atol=0, rtol=0)
    assert (preprocess(path) - preprocess(stored)).abs().max() > 1  # so the orientation made a difference


def test_in_memory_image_is_not_transposed(tmp_path):
    path = tmp_path / "photo.jpg"
    jpeg_with_orientation(path, rgb_array(160, 90), 6)
    with Image.open(path) as image:
        as_stored = preprocess(image)  # used as it is: sideways
        upright = preprocess(ImageOps.exif_transpose(image))
    raw = Image.fromarray(np.array(Image.open(path)))  # the same pixels with no EXIF attached
    torch.testing.assert_close(as_stored, preprocess(raw), atol=0, rtol=0)
    torch.testing.assert_close(upright, preprocess(path), atol=0, rtol=0)


# -----------------------------------------------------------------------------
# Bad input: a clear error that names the file.


def test_load_image_errors(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    good = io.BytesIO()
    make("RGB", 200, 200).save(good, format="PNG")
    (tmp_path / "cut.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "folder.png").mkdir()
    cases = {"missing.jpg": "No such file", "notes.jpg": "not an image file", "cut.png": "truncated",
             "folder.png": "directory"}
    for name, reason in cases.items():
        path = tmp_path / name
        with pytest.raises(ImageError) as e:
            load_image(path)
        message = str(e.value)
        assert message.startswith(f"cannot open image '{path}': ") and reason in message, message
        assert "\n" not in message
    assert issubclass(ImageError, OSError)


def test_preprocess_rejects_other_inputs():
    with pytest.raises(TypeError, match="ndarray"):
        preprocess(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="at least one"):
        preprocess([])
