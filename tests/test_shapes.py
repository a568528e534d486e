"""The mini AltCLIP's data world (shapes.py): determinism, the held-out split, parallel and grammatical captions, and
pixels that show what the scene says.

Expected words and sentences here are written out by hand, not read from shapes.py's tables.
"""
import dataclasses
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import shapes

LANGS = ["en", "zh", "ja", "ko", "ru", "ar", "hi", "de", "fr", "es"]

# Per language, a word (or any of its inflected forms) that shows each attribute value is mentioned.
COLOUR_WORDS = {
    "en": {"red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "blue": "blue", "purple": "purple"},
    "zh": {"red": "红", "orange": "橙", "yellow": "黄", "green": "绿", "blue": "蓝", "purple": "紫"},
    "ja": {"red": "赤", "orange": "オレンジ", "yellow": "黄", "green": "緑", "blue": "青", "purple": "紫"},
    "ko": {"red": "빨간", "orange": "주황", "yellow": "노란", "green": "초록", "blue": "파란", "purple": "보라"},
    "ru": {"red": "красн", "orange": "оранжев", "yellow": "жёлт", "green": "зелён", "blue": "син",
           "purple": "фиолетов"},
    "ar": {"red": ("أحمر", "حمراء"), "orange": "برتقالي", "yellow": ("أصفر", "صفراء"), "green": ("أخضر", "خضراء"),
           "blue": ("أزرق", "زرقاء"), "purple": "بنفسجي"},
    "hi": {"red": "लाल", "orange": "नारंगी", "yellow": ("पीला", "पीले"), "green": ("हरा", "हरे"),
           "blue": ("नीला", "नीले"), "purple": "बैंगनी"},
    "de": {"red": "rot", "orange": "orange", "yellow": "gelb", "green": "grün", "blue": "blau", "purple": "violett"},
    "fr": {"red": "rouge", "orange": "orange", "yellow": "jaune", "green": "vert", "blue": "bleu", "purple": "violet"},
    "es": {"red": "roj", "orange": "naranja", "yellow": "amarill", "green": "verde", "blue": "azul", "purple": "morad"},
}
SHAPE_WORDS = {
    "en": {"circle": "circle", "square": "square", "triangle": "triangle", "star": "star", "heart": "heart",
           "cross": "cross"},
    "zh": {"circle": "圆", "square": "正方形", "triangle": "三角形", "star": "五角星", "heart": "心", "cross": "十字"},
    "ja": {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星", "heart": "ハート", "cross": "十字"},
    "ko": {"circle": "원", "square": "사각형", "triangle": "삼각형", "star": "별", "heart": "하트", "cross": "십자"},
    "ru": {"circle": "круг", "square": "квадрат", "triangle": "треугольник", "star": "звезд", "heart": "сердц",
           "cross": "крест"},
    "ar": {"circle": "دائرة", "square": "مربع", "triangle": "مثلث", "star": "نجمة", "heart": "قلب", "cross": "صليب"},
    "hi": {"circle": "वृत्त", "square": "वर्ग", "triangle": "त्रिभुज", "star": ("तारा", "तारे"), "heart": "दिल",
           "cross": "क्रॉस"},
    "de": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern", "heart": "Herz",
           "cross": "Kreuz"},
    "fr": {"circle": "cercle", "square": "carré", "triangle": "triangle", "star": "étoile", "heart": "cœur",
           "cross": "croix"},
    "es": {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "star": "estrella", "heart": "corazón",
           "cross": "cruz"},
}
SIZE_WORDS = {
    "en": {"small": "small", "large": "large"}, "zh": {"small": "小", "large": "大"},
    "ja": {"small": "小さ", "large": "大き"}, "ko": {"small": "작은", "large": "큰"},
    "ru": {"small": "маленьк", "large": "больш"}, "ar": {"small": "صغير", "large": "كبير"},
    "hi": {"small": "छोट", "large": "बड़"}, "de": {"small": "klein", "large": "groß"},
    "fr": {"small": "petit", "large": "grand"}, "es": {"small": "pequeñ", "large": "grande"},
}
POSITION_WORDS = {
    "en": {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre"},
    "zh": {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "中间"},
    "ja": {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "真ん中"},
    "ko": {"left": "왼쪽", "right": "오른쪽", "top": "위", "bottom": "아래", "centre": "가운데"},
    "ru": {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "centre": "в центре"},
    "ar": {"left": "اليسار", "right": "اليمين", "top": "الأعلى", "bottom": "الأسفل", "centre": "الوسط"},
    "hi": {"left": "बाईं", "right": "दाईं", "top": "ऊपर", "bottom": "नीचे", "centre": "बीच"},
    "de": {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "Mitte"},
    "fr": {"left": "gauche", "right": "droite", "top": "en haut", "bottom": "en bas", "centre": "centre"},
    "es": {"left": "izquierda", "right": "derecha", "top": "arriba", "bottom": "abajo", "centre": "centro"},
}


def mentions(text, words):
    """The values in `words` ({value: word or tuple of forms}) whose word appears in `text`."""
    return {v for v, w in words.items() if any(f in text for f in (w if isinstance(w, tuple) else (w,)))}


# ------------------------------------------------------------------------------------------------ the class split

def test_held_out_split():
    assert len(shapes.CLASSES) == 36 and len(set(shapes.CLASSES)) == 36
    assert len(shapes.HELD_OUT) / len(shapes.CLASSES) >= 0.20
    assert not set(shapes.HELD_OUT) & set(shapes.SEEN)
    assert set(shapes.HELD_OUT) | set(shapes.SEEN) == set(shapes.CLASSES)
    assert shapes.SEEN == [c for c in shapes.CLASSES if c not in shapes.HELD_OUT]  # same order
    for colour in shapes.COLOURS:
        assert sum(c == colour for c, _ in shapes.SEEN) >= 4, colour
    for shape in shapes.SHAPES:
        assert sum(s == shape for _, s in shapes.SEEN) >= 4, shape


def test_sample_scene_never_draws_held_out_by_default():
    rng = random.Random(123)
    drawn = {(s.colour, s.shape) for s in (shapes.sample_scene(rng) for _ in range(3000))}
    assert drawn == set(shapes.SEEN)  # every seen class turns up, no held-out one
    held = {(s.colour, s.shape) for s in (shapes.sample_scene(rng, shapes.HELD_OUT) for _ in range(300))}
    assert held == set(shapes.HELD_OUT)


# ------------------------------------------------------------------------------------------------- determinism

def draw(seed, n=4):
    rng = random.Random(seed)
    scenes = [shapes.sample_scene(rng, shapes.CLASSES) for _ in range(n)]
    return scenes, shapes.make_images(scenes), [shapes.captions(s, rng) for s in scenes]


def test_same_seed_same_data_different_seed_different_data():
    scenes, images, caps = draw(7)
    scenes2, images2, caps2 = draw(7)
    assert scenes == scenes2 and caps == caps2 and torch.equal(images, images2)
    scenes3, images3, caps3 = draw(8)
    assert scenes != scenes3 and caps != caps3 and not torch.equal(images, images3)
    # two scenes that differ only in their noise seed differ in pixels, not in anything else
    other = dataclasses.replace(scenes[0], seed=scenes[0].seed + 1)
    a, b = shapes.make_images([scenes[0], other]).int()
    assert (a != b).float().mean() > 0.5


def test_noise_is_rebuilt_identically():
    """The noise field is built once and cached; rebuilt (as in a fresh process) it gives the same pixels."""
    images = draw(7)[1]
    shapes._noise_field.cache_clear()
    assert torch.equal(draw(7)[1], images)


def test_image_format():
    scenes, images, _ = draw(3, n=3)
    assert images.shape == (3, 3, 224, 224) and images.dtype == torch.uint8
    image = shapes.render(scenes[1])
    assert image.mode == "RGB" and image.size == (224, 224)
    assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), images[1])
    assert shapes.render(scenes[1], size=112).size == (112, 112)


def test_scene_geometry():
    rng = random.Random(5)
    for _ in range(2000):
        s = shapes.sample_scene(rng, shapes.CLASSES)
        assert (28 <= s.radius <= 45) if s.size == "small" else (58 <= s.radius <= 90)
        assert s.radius <= s.x <= 224 - s.radius and s.radius <= s.y <= 224 - s.radius  # inside the image
        assert -30 <= s.angle <= 30
        third = 224 / 3
        ok = {"left": s.x <= third, "right": s.x >= 2 * third, "top": s.y <= third, "bottom": s.y >= 2 * third,
              "centre": abs(s.x - 112) <= 15 and abs(s.y - 112) <= 15}[s.position]
        assert ok, s
        assert all(abs(a - b) <= 12 for a, b in zip(s.rgb, shapes.COLOURS[s.colour]))


# ------------------------------------------------------------------------------------------------------ pixels

SHADE = 0.6  # the print: motifs in the shape's colour darkened to 60%, one per 14 x 14 cell of the image


def shape_mask(scene, image):
    """Pixels nearer the scene's colour (or the print's darker shade of it) than its background grey: (224, 224)
    bool."""
    x = image.numpy().astype(np.float32)  # (3, H, W)
    rgb = np.array(scene.rgb, np.float32)[:, None, None]
    to_colour = np.minimum(((x - rgb) ** 2).sum(0), ((x - SHADE * rgb) ** 2).sum(0))
    return to_colour < ((x - scene.background) ** 2).sum(0)


@pytest.mark.parametrize("seed", range(6))
def test_pixels_show_the_scene(seed):
    rng = random.Random(seed)
    scenes = [shapes.sample_scene(rng, shapes.CLASSES) for _ in range(20)]
    yy, xx = np.mgrid[:224, :224]
    for s, image in zip(scenes, shapes.make_images(scenes).numpy().astype(np.float32)):
        # Near the centre of a large shape (radius >= 58, so the windows lie inside it however it turns): a corner
        # of the print's 14-px cells (never under a motif: 9.9 px from the cells' centres, the motifs reach 5.5)
        # shows the colour; the centre of a cell, the darker print.
        corner_x, corner_y = 14 * round(s.x / 14), 14 * round(s.y / 14)
        cell_x, cell_y = 14 * math.floor(s.x / 14) + 7, 14 * math.floor(s.y / 14) + 7
        plain = image[:, corner_y - 1:corner_y + 1, corner_x - 1:corner_x + 1].mean((1, 2))  # 2 x 2 window
        printed = image[:, cell_y - 1:cell_y + 2, cell_x - 1:cell_x + 2].mean((1, 2))  # 3 x 3 window
        # noise std <= 15: over 4 pixels the mean is within 2.6 sigma = 20 of the colour, over 9 within 3 sigma = 15
        if s.size == "large":
            np.testing.assert_allclose(plain, s.rgb, atol=20, rtol=0)
            np.testing.assert_allclose(printed, SHADE * np.array(s.rgb), atol=15, rtol=0)
        far = (xx - s.x) ** 2 + (yy - s.y) ** 2 > (s.radius + 2) ** 2  # outside the shape's circle
        background = image[:, far]  # (3, n)
        # thousands of pixels: the mean is the grey level to within ~1, the spread is the noise (to 15%)
        np.testing.assert_allclose(background.mean(1), [s.background] * 3, atol=1.5, rtol=0)
        assert abs(background.std(1).mean() / s.noise - 1) < 0.15


def test_shape_areas_and_centre():
    """Area scales with radius squared, matches the geometry where it is easy to compute, and the coloured pixels
    are centred on the scene's (x, y)."""
    rng = random.Random(11)
    areas = {"circle": math.pi, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4}  # times radius^2
    for shape in shapes.SHAPES:
        scene = shapes.sample_scene(rng, [("blue", shape)])
        small = dataclasses.replace(scene, radius=30.0, x=112.0, y=112.0, noise=5.0)
        large = dataclasses.replace(small, radius=70.0)
        a_small, a_large = (shape_mask(s, shapes.make_images([s])[0]) for s in (small, large))
        n_small, n_large = a_small.sum(), a_large.sum()
        assert n_large / n_small == pytest.approx((70 / 30) ** 2, rel=0.06), shape
        if shape in areas:
            assert n_large == pytest.approx(areas[shape] * 70 ** 2, rel=0.03), shape
        if shape in ("circle", "square", "star", "cross"):  # point-symmetric about their centre
            ys, xs = a_large.nonzero()
            assert abs(xs.mean() - 112) < 1.5 and abs(ys.mean() - 112) < 1.5, shape


def test_the_print_repeats_the_shape_in_every_cell():
    """Inside a large shape, the darker pixels repeat every 14 px, and each cell's motif is the shape, small: its
    area is the outline's (times 5.5 px squared) where that is easy to compute, and no two shapes print alike."""
    areas = {"circle": math.pi, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4}  # times radius^2
    cells = {}
    for shape in shapes.SHAPES:
        scene = shapes.sample_scene(random.Random(4), [("orange", shape)])
        scene = dataclasses.replace(scene, x=112.0, y=112.0, radius=90.0, angle=0.0, noise=0.5)
        x = shapes.make_images([scene])[0].numpy().astype(np.float32)
        rgb = np.array(scene.rgb, np.float32)[:, None, None]
        dark = ((x - SHADE * rgb) ** 2).sum(0) < ((x - rgb) ** 2).sum(0)  # (224, 224)
        block = dark[84:140, 84:140]  # 4 x 4 cells around the centre, inside every shape at radius 90
        assert (block[:42] == block[14:]).mean() > 0.99 and (block[:, :42] == block[:, 14:]).mean() > 0.99, shape
        cells[shape] = block[14:28, 14:28]
        if shape in areas:
            # PIL fills every pixel a small polygon's edge touches: up to ~30% more than the area inside the edge
            assert cells[shape].sum() == pytest.approx(areas[shape] * 5.5 ** 2, rel=0.3), shape
    for a, b in itertools.combinations(shapes.SHAPES, 2):
        assert (cells[a] != cells[b]).sum() >= 8, (a, b)


def test_position_and_size_are_visible():
    rng = random.Random(2)
    for _ in range(60):
        s = shapes.sample_scene(rng, shapes.CLASSES)
        # without noise: the print's dark shade of a colour can be near the grey, and noisy grey pixels pass for it
        mask = shape_mask(s, shapes.make_images([dataclasses.replace(s, noise=0.0)])[0])
        ys, xs = mask.nonzero()
        cx, cy = xs.mean(), ys.mean()
        side = {"left": cx < 90, "right": cx > 134, "top": cy < 90, "bottom": cy > 134,
                "centre": abs(cx - 112) < 25 and abs(cy - 112) < 25}[s.position]
        assert side, (s, cx, cy)
        area = mask.sum()
        assert (area < 2 * 42 ** 2 * 1.6) if s.size == "small" else (area > 1.2 * 58 ** 2), (s, area)


# ---------------------------------------------------------------------------------------------------- captions

def test_captions_are_parallel():
    rng = random.Random(0)
    seen_mentions = set()
    for _ in range(400):
        s = shapes.sample_scene(rng, shapes.CLASSES)
        caps = shapes.captions(s, rng)
        assert list(caps) == LANGS and all(caps.values())
        size_said = bool(mentions(caps["en"], SIZE_WORDS["en"]))
        position_said = bool(mentions(caps["en"], POSITION_WORDS["en"]))
        seen_mentions.add((size_said, position_said))
        for lang, text in caps.items():
            assert mentions(text, COLOUR_WORDS[lang]) == {s.colour}, (lang, text)
            assert mentions(text, SHAPE_WORDS[lang]) == {s.shape}, (lang, text)
            assert mentions(text, SIZE_WORDS[lang]) == ({s.size} if size_said else set()), (lang, text)
            assert mentions(text, POSITION_WORDS[lang]) == ({s.position} if position_said else set()), (lang, text)
    assert seen_mentions == {(False, False), (False, True), (True, False), (True, True)}


def test_captions_vary_in_phrasing():
    rng = random.Random(1)
    s = shapes.sample_scene(rng)
    for lang in LANGS:
        forms = {shapes.captions(s, random.Random(i))[lang] for i in range(60)}
        assert len(forms) >= 6, lang  # 4 mention patterns x several phrasings


def test_labels():
    for lang in LANGS:
        labels = [shapes.label(c, s, lang) for c, s in shapes.CLASSES]
        assert len(set(labels)) == 36, lang
        for (c, s), text in zip(shapes.CLASSES, labels):
            assert mentions(text, COLOUR_WORDS[lang]) == {c} and mentions(text, SHAPE_WORDS[lang]) == {s}
            assert not mentions(text, SIZE_WORDS[lang]) and not mentions(text, POSITION_WORDS[lang])


# Written from knowledge of each language, not from shapes.py's tables: (colour, shape, size, position, variant).
GRAMMAR = {
    "en": [(("orange", "circle", None, None, 0), "an orange circle"),
           (("orange", "star", "small", None, 0), "a small orange star"),
           (("red", "square", None, None, 0), "a red square"),
           (("blue", "heart", None, "top", 2), "there is a blue heart at the top"),
           (("green", "cross", "large", "left", 1), "a picture of a large green cross on the left")],
    "zh": [(("red", "circle", None, None, 0), "一个红色的圆形"),
           (("yellow", "star", None, None, 0), "一颗黄色的五角星"),
           (("blue", "heart", None, None, 0), "一颗蓝色的爱心"),
           (("purple", "cross", "small", None, 0), "一个紫色的小十字"),
           (("green", "square", "large", "left", 1), "图片左边有一个绿色的大正方形")],
    "ja": [(("red", "circle", None, None, 0), "赤い丸"),
           (("green", "star", None, None, 0), "緑の星"),
           (("orange", "square", None, None, 0), "オレンジ色の四角"),
           (("red", "circle", None, "left", 1), "左に赤い丸があります"),
           (("red", "circle", None, "left", 0), "左の赤い丸"),
           (("yellow", "heart", "small", None, 0), "小さな黄色いハート")],
    "ko": [(("red", "circle", None, None, 0), "빨간 원"),
           (("blue", "star", None, None, 0), "파란 별"),
           (("orange", "heart", None, None, 0), "주황색 하트"),
           (("green", "star", "large", None, 0), "큰 초록색 별"),
           (("red", "circle", None, "left", 1), "왼쪽에 빨간 원이 있습니다"),
           (("blue", "heart", None, None, 1), "파란 하트가 있습니다")],
    "ru": [(("red", "star", None, None, 0), "красная звезда"),
           (("red", "circle", None, None, 0), "красный круг"),
           (("red", "heart", None, None, 0), "красное сердце"),
           (("blue", "star", None, None, 0), "синяя звезда"),
           (("blue", "heart", None, None, 0), "синее сердце"),
           (("yellow", "star", "small", None, 1), "изображение маленькой жёлтой звезды"),
           (("blue", "heart", "large", "centre", 2), "в центре нарисовано большое синее сердце"),
           (("green", "cross", None, "left", 0), "зелёный крест слева")],
    "ar": [(("red", "circle", None, None, 0), "دائرة حمراء"),
           (("red", "square", None, None, 0), "مربع أحمر"),
           (("yellow", "star", None, None, 0), "نجمة صفراء"),
           (("purple", "star", "small", None, 2), "توجد نجمة بنفسجية صغيرة"),
           (("blue", "heart", None, "right", 2), "يوجد قلب أزرق على اليمين")],
    "hi": [(("blue", "star", None, None, 0), "एक नीला तारा"),
           (("red", "circle", None, None, 0), "एक लाल वृत्त"),
           (("blue", "star", None, None, 1), "एक नीले तारे की तस्वीर"),
           (("green", "square", "large", None, 1), "एक बड़े हरे वर्ग की तस्वीर"),
           (("yellow", "heart", "small", "left", 2), "बाईं ओर एक छोटा पीला दिल है")],
    "de": [(("red", "circle", None, None, 0), "ein roter Kreis"),
           (("red", "heart", None, None, 0), "ein rotes Herz"),
           (("purple", "square", None, None, 0), "ein violettes Quadrat"),
           (("red", "heart", None, None, 1), "ein Bild mit einem roten Herzen"),
           (("blue", "star", "small", "top", 2), "oben ist ein kleiner blauer Stern zu sehen"),
           (("green", "circle", None, "left", 0), "ein grüner Kreis links")],
    "fr": [(("red", "star", None, None, 0), "une étoile rouge"),
           (("red", "circle", None, None, 0), "un cercle rouge"),
           (("green", "cross", None, None, 0), "une croix verte"),
           (("purple", "heart", None, None, 0), "un cœur violet"),
           (("orange", "star", None, None, 0), "une étoile orange"),
           (("yellow", "star", "large", "bottom", 0), "une grande étoile jaune en bas"),
           (("green", "circle", None, None, 1), "une image d'un cercle vert")],
    "es": [(("red", "star", None, None, 0), "una estrella roja"),
           (("red", "circle", None, None, 0), "un círculo rojo"),
           (("purple", "cross", None, None, 0), "una cruz morada"),
           (("orange", "heart", None, None, 0), "un corazón naranja"),
           (("yellow", "star", "small", "left", 2), "hay una estrella amarilla pequeña a la izquierda")],
}


@pytest.mark.parametrize("lang", LANGS)
def test_grammar(lang):
    for (colour, shape, size, position, variant), expected in GRAMMAR[lang]:
        assert shapes.caption(colour, shape, lang, size, position, variant) == expected
    colour, shape = GRAMMAR[lang][0][0][:2]
    assert shapes.label(colour, shape, lang) == GRAMMAR[lang][0][1]


def test_committed_example_pictures_are_what_save_examples_draws(tmp_path):
    """examples/shapes/*.png are `python shapes.py examples/shapes`'s output (compared as pixels, not PNG bytes), and
    the first example is a held-out class, as the README says."""
    from PIL import Image

    committed = Path(__file__).resolve().parents[1] / "examples" / "shapes"
    paths = shapes.save_examples(tmp_path)
    assert sorted(p.name for p in committed.glob("*.png")) == sorted(p.name for p in paths)
    for path in paths:
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(committed / path.name))), path.name
    assert shapes.EXAMPLES[0] in shapes.HELD_OUT and paths[0].name == "yellow-star.png"
