"""Coloured shapes and their captions in ten languages (and two more to teach): the data world of the mini AltCLIP.

Every image shows one shape on a noisy grey background, and is described by four attributes:

    colour    red, orange, yellow, green, blue, purple      } the 36 classes used for zero-shot classification
    shape     circle, square, triangle, star, heart, cross  }
    size      small, large
    position  left, right, top, bottom, centre

plus what the captions never mention: the exact spot, radius and angle, a jitter of the colour, the background's
grey level and its pixel noise. A `Scene` holds all of it; `sample_scene` draws one from a `random.Random`, `render`
turns it into pixels and `captions` into one sentence per language, all saying the same thing.

Each shape is printed with small copies of itself: a darker motif of the same shape at the centre of every
14 × 14 cell of the image (the patches of a ViT/14), like a fabric print. A patch then shows its shape up close.
Why: a transformer this small, trained from scratch for minutes, learns a plain silhouette slowly; recognising it
means combining patches by attention. `python bench/shape_probe.py` measures it (supervised shape classification
with the mini model's image tower; the figures are in bench/README.md): printed shapes are learned in a fraction of
the steps plain silhouettes need. The print is anchored to the image's grid, not to the shape: shifted by a few
pixels (as in a photo of a print), it is learned hardly faster than the silhouette. So what the mini model learns is "which motif is printed here", and it knows
shapes only as shapes.py draws them.

Eight (colour, shape) classes are `HELD_OUT`: they never appear in training, as image or caption, so zero-shot
accuracy on them shows whether the model composes "red" and "star" rather than memorising "red star".

Captions are written, not translated word by word: each language has small tables of its words with the forms
its grammar needs (gender, case, measure words, particles) and a function that puts them in its own order.
"""
import functools
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_SIZE = 224  # CLIP ViT-L/14's input: 16 x 16 patches of 14 pixels

LANGUAGES = ["en", "zh", "ja", "ko", "ru", "ar", "hi", "de", "fr", "es"]
# Two more that the mini AltCLIP in examples/mini-altclip never saw (its tokenizer and training used LANGUAGES only):
# `python train.py teach` and `tune` teach them to it. Kept apart, so that LANGUAGES' captions and test sets, drawn
# from the same random streams as before, stay what the committed model was trained and scored on.
NEW_LANGUAGES = ["it", "uk"]
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ru": "Russian",
                  "ar": "Arabic", "hi": "Hindi", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
                  "uk": "Ukrainian"}

# Far apart in RGB, so that they stay distinct after jitter and noise; none is grey, like the background.
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (35, 160, 60),
    "blue": (35, 85, 215),
    "purple": (135, 45, 175),
}
SHAPES = ["circle", "square", "triangle", "star", "heart", "cross"]
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "centre"]

CLASSES = [(colour, shape) for colour in COLOURS for shape in SHAPES]
# A shifted diagonal (colour i with shape i + 1) and two more: every colour and every shape loses at most two of its
# six partners, so each is still seen in training with at least four others.
HELD_OUT = [("red", "square"), ("orange", "triangle"), ("yellow", "star"), ("green", "heart"), ("blue", "cross"),
            ("purple", "circle"), ("red", "star"), ("green", "circle")]
SEEN = [c for c in CLASSES if c not in HELD_OUT]

RADIUS = {"small": (28, 42), "large": (58, 74)}  # pixels; a large shape's centre still fits in a third of the image
MAX_ANGLE = 30  # degrees either way
COLOUR_JITTER = 12  # per RGB channel, so that a colour is a small cloud, not one value
BACKGROUND = (70, 190)  # grey levels
NOISE = (3.0, 15.0)  # standard deviation of the pixel noise
PRINT_CELL = 14  # pixels at 224 px: one motif per patch of a ViT/14
PRINT_RADIUS = 5.5  # the motif's farthest point from its cell's centre
PRINT_SHADE = 0.6  # the motif is the shape's colour darkened to 60%


@dataclass(frozen=True)
class Scene:
    """Everything that determines one image; `render(scene)` is a pure function of it."""
    colour: str
    shape: str
    size: str
    position: str
    angle: float  # degrees, counter-clockwise
    x: float  # centre of the shape, pixels from the left...
    y: float  # ...and from the top, in a 224 x 224 image
    radius: float  # pixels; every point of the shape lies within it
    rgb: tuple  # the colour after jitter
    background: int  # grey level
    noise: float  # standard deviation of the pixel noise
    seed: int  # picks the noise pattern


def sample_scene(rng: random.Random, classes=SEEN) -> Scene:
    """A scene whose (colour, shape) is uniform over `classes`; size, position and the rest uniform at random."""
    colour, shape = rng.choice(classes)
    size, position = rng.choice(SIZES), rng.choice(POSITIONS)
    radius = rng.uniform(*RADIUS[size])
    # The centre lies in the named third of the image (or near its middle for "centre"), the shape inside the image.
    third, middle = IMAGE_SIZE / 3, IMAGE_SIZE / 2
    near, far = rng.uniform(radius, third), rng.uniform(IMAGE_SIZE - third, IMAGE_SIZE - radius)
    across = middle + rng.uniform(-20, 20)
    x, y = {"left": (near, across), "right": (far, across), "top": (across, near), "bottom": (across, far),
            "centre": (middle + rng.uniform(-12, 12), middle + rng.uniform(-12, 12))}[position]
    rgb = tuple(min(255, max(0, v + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for v in COLOURS[colour])
    return Scene(colour, shape, size, position, angle=rng.uniform(-MAX_ANGLE, MAX_ANGLE), x=x, y=y, radius=radius,
                 rgb=rgb, background=rng.randint(*BACKGROUND), noise=rng.uniform(*NOISE), seed=rng.getrandbits(32))


# ----------------------------------------------------------------------------------------------------------- images

def _outline(shape: str) -> np.ndarray:
    """The shape as a polygon (k, 2) around (0, 0), pointing up, its farthest point at distance 1 (y grows upwards)."""
    def ring(n, radii, start=math.pi / 2):
        t = start + 2 * math.pi * np.arange(n) / n
        return np.stack([np.cos(t), np.sin(t)], 1) * np.resize(radii, n)[:, None]
    if shape == "circle":
        return ring(64, [1.0])
    if shape == "square":
        return ring(4, [1.0], start=math.pi / 4)
    if shape == "triangle":
        return ring(3, [1.0])
    if shape == "star":  # five points, the inner corners at 0.42: thick enough to fill 14-pixel patches
        return ring(10, [1.0, 0.42])
    if shape == "heart":  # the classic heart curve, centred on its bounding box
        t = np.linspace(0, 2 * math.pi, 80, endpoint=False)
        p = np.stack([16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)], 1)
        p -= (p.max(0) + p.min(0)) / 2
        return p / np.linalg.norm(p, axis=1).max()
    if shape == "cross":  # a plus sign: arms 0.6 wide, corners at distance 1
        w, a = 0.3, math.sqrt(1 - 0.3 ** 2)
        quarter = np.array([[w, a], [-w, a], [-w, w]])  # the top arm and the inner corner to its left
        turn = np.array([[0, 1], [-1, 0]])  # (x, y) @ turn = (-y, x): a quarter turn counter-clockwise
        return np.concatenate([quarter @ np.linalg.matrix_power(turn, k) for k in range(4)])
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


OUTLINES = {shape: _outline(shape) for shape in SHAPES}


@functools.cache
def _noise_field(size: int) -> np.ndarray:
    """One fixed Gaussian field (3, 2*size, 2*size); each image takes a window of it. Drawing 150k fresh normals per
    image costs ~2 ms, ten times everything else."""
    return np.random.default_rng(0).standard_normal((3, 2 * size, 2 * size), dtype=np.float32)


@functools.cache
def print_mask(shape: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Where the print darkens a `shape`: (size, size) bool, True on an upright copy of the shape (radius
    PRINT_RADIUS) centred in every PRINT_CELL x PRINT_CELL cell of the image, scaled with `size`."""
    s = size / IMAGE_SIZE
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for cy in np.arange(PRINT_CELL / 2, IMAGE_SIZE, PRINT_CELL):
        for cx in np.arange(PRINT_CELL / 2, IMAGE_SIZE, PRINT_CELL):
            draw.polygon(((OUTLINES[shape] * PRINT_RADIUS * [1, -1] + [cx, cy]) * s).ravel().tolist(), fill=1)
    return np.asarray(mask, bool)


def _pixels(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as uint8 (3, size, size)."""
    s = size / IMAGE_SIZE
    a = math.radians(scene.angle)
    rotate = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    points = OUTLINES[scene.shape] @ rotate.T * scene.radius  # (k, 2), y up
    points = (points * [1, -1] + [scene.x, scene.y]) * s  # image coordinates: y down
    plain, printed = (Image.new("RGB", (size, size), (scene.background,) * 3) for _ in range(2))
    ImageDraw.Draw(plain).polygon(points.ravel().tolist(), fill=scene.rgb)
    ImageDraw.Draw(printed).polygon(points.ravel().tolist(), fill=tuple(round(PRINT_SHADE * v) for v in scene.rgb))
    canvas = np.where(print_mask(scene.shape, size)[:, :, None], np.asarray(printed), np.asarray(plain))  # (H, W, 3)
    dy, dx = scene.seed % size, (scene.seed // size) % size
    image = scene.noise * _noise_field(size)[:, dy:dy + size, dx:dx + size]  # (3, size, size)
    image += canvas.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image, size x size (the geometry scales with it)."""
    return Image.fromarray(_pixels(scene, size).transpose(1, 2, 0))


def make_images(scenes: list) -> torch.Tensor:
    """The scenes as uint8 (N, 3, 224, 224), ready for the image preprocessing."""
    out = np.empty((len(scenes), 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = _pixels(scene)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------------------- captions
# One function per language: caption(colour, shape, size or None, position or None, variant) -> str. Variant 0 with
# neither size nor position is the zero-shot label; variants 1 and 2 are other phrasings of the same content.

# English: size before colour before noun; "an" before a vowel sound (an orange circle, a small orange circle).
EN_POSITION = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
               "centre": "in the centre"}


def _en(colour, shape, size, position, variant):
    words = " ".join(w for w in (size, colour, shape) if w)
    noun_phrase = ("an " if words[0] in "aeiou" else "a ") + words
    where = f" {EN_POSITION[position]}" if position else ""
    return [f"{noun_phrase}{where}", f"a picture of {noun_phrase}{where}", f"there is {noun_phrase}{where}"][variant]


# Chinese: numeral + measure word + colour + 的 + noun (一个红色的圆形); stars and hearts are counted with 颗, the
# others with 个. Monosyllabic 大/小 bind to the noun without 的 (一颗红色的小五角星). A place comes first, with 有
# (there is) or 画着 (is drawn): 左边有一个红色的圆形.
ZH_COLOUR = {"red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "blue": "蓝色", "purple": "紫色"}
ZH_SHAPE = {"circle": ("个", "圆形"), "square": ("个", "正方形"), "triangle": ("个", "三角形"),
            "star": ("颗", "五角星"), "heart": ("颗", "爱心"), "cross": ("个", "十字")}  # (measure word, noun)
ZH_SIZE = {"small": "小", "large": "大"}
ZH_POSITION = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "centre": "中间"}


def _zh(colour, shape, size, position, variant):
    measure, noun = ZH_SHAPE[shape]
    noun = ZH_SIZE.get(size, "") + noun
    noun_phrase = f"一{measure}{ZH_COLOUR[colour]}的{noun}"
    if position is None:  # 一张红色圆形的图片: inside another 的-phrase the colour joins the noun directly
        return [noun_phrase, f"一张{ZH_COLOUR[colour]}{noun}的图片", f"图中画着{noun_phrase}"][variant]
    where = ZH_POSITION[position]
    return [f"{where}有{noun_phrase}", f"图片{where}有{noun_phrase}", f"{where}画着{noun_phrase}"][variant]


# Japanese: no article; modifiers before the noun. 赤い, 黄色い, 青い are い-adjectives; orange, green and purple are
# nouns joined with の (緑の丸); 小さな/大きな come first (小さな赤い丸). A place takes に before an existence verb
# (左に赤い丸があります) and の before a noun (左の赤い丸).
JA_COLOUR = {"red": "赤い", "orange": "オレンジ色の", "yellow": "黄色い", "green": "緑の", "blue": "青い",
             "purple": "紫の"}
JA_SHAPE = {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星", "heart": "ハート", "cross": "十字"}
JA_SIZE = {"small": "小さな", "large": "大きな"}
JA_POSITION = {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "真ん中"}


def _ja(colour, shape, size, position, variant):
    noun_phrase = JA_SIZE.get(size, "") + JA_COLOUR[colour] + JA_SHAPE[shape]
    if position is None:
        return [noun_phrase, f"{noun_phrase}があります", f"{noun_phrase}の絵"][variant]
    where = JA_POSITION[position]
    return [f"{where}の{noun_phrase}", f"{where}に{noun_phrase}があります", f"{where}に{noun_phrase}がある絵"][variant]


# Korean: adnominal forms before the noun: 빨간, 노란, 파란 are adjectives (빨갛다 -> 빨간); orange, green and purple
# are colour nouns used as modifiers (주황색 원). The subject particle is 이 after a final consonant, 가 after a
# vowel (원이, 하트가). A place takes 에 (왼쪽에 ... 있습니다), and 에 있는 before a noun.
KO_COLOUR = {"red": "빨간", "orange": "주황색", "yellow": "노란", "green": "초록색", "blue": "파란", "purple": "보라색"}
KO_SHAPE = {"circle": ("원", "이"), "square": ("사각형", "이"), "triangle": ("삼각형", "이"), "star": ("별", "이"),
            "heart": ("하트", "가"), "cross": ("십자 모양", "이")}  # (noun, subject particle)
KO_SIZE = {"small": "작은", "large": "큰"}
KO_POSITION = {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽", "centre": "가운데"}


def _ko(colour, shape, size, position, variant):
    noun, particle = KO_SHAPE[shape]
    noun_phrase = " ".join(w for w in (KO_SIZE.get(size), KO_COLOUR[colour], noun) if w)
    subject = noun_phrase + particle
    if position is None:
        return [noun_phrase, f"{subject} 있습니다", f"{subject} 있는 그림"][variant]
    where = KO_POSITION[position]
    return [f"{where}에 있는 {noun_phrase}", f"{where}에 {subject} 있습니다", f"{where}에 {subject} 있는 그림"][variant]


# Russian: adjectives agree with the noun in gender and case. Columns: nominative masculine, feminine, neuter;
# genitive masculine/neuter, feminine (after изображение, "a picture of"). синий is soft-stemmed (синяя, синее),
# маленький takes -ий after к, большой is stressed on the ending. The short participle agrees too: нарисован круг,
# нарисована звезда, нарисовано сердце. Places are adverbs (слева) or в + prepositional (в центре).
RU_ADJECTIVE = {
    "red": ("красный", "красная", "красное", "красного", "красной"),
    "orange": ("оранжевый", "оранжевая", "оранжевое", "оранжевого", "оранжевой"),
    "yellow": ("жёлтый", "жёлтая", "жёлтое", "жёлтого", "жёлтой"),
    "green": ("зелёный", "зелёная", "зелёное", "зелёного", "зелёной"),
    "blue": ("синий", "синяя", "синее", "синего", "синей"),
    "purple": ("фиолетовый", "фиолетовая", "фиолетовое", "фиолетового", "фиолетовой"),
    "small": ("маленький", "маленькая", "маленькое", "маленького", "маленькой"),
    "large": ("большой", "большая", "большое", "большого", "большой"),
}
RU_NOUN = {"circle": ("круг", "круга", "m"), "square": ("квадрат", "квадрата", "m"),
           "triangle": ("треугольник", "треугольника", "m"), "star": ("звезда", "звезды", "f"),
           "heart": ("сердце", "сердца", "n"), "cross": ("крест", "креста", "m")}  # (nominative, genitive, gender)
RU_POSITION = {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "centre": "в центре"}
RU_DRAWN = {"m": "нарисован", "f": "нарисована", "n": "нарисовано"}


def _east_slavic(adjective, noun, positions, drawn, picture_of, in_the_picture):
    """Russian and Ukrainian captions share their grammar: adjectives agree with the noun in gender and case, the
    genitive follows "a picture of", the participle "drawn" agrees with the noun."""
    def caption(colour, shape, size, position, variant):
        nominative, genitive, gender = noun[shape]
        nom, gen = {"m": 0, "f": 1, "n": 2}[gender], {"m": 3, "f": 4, "n": 3}[gender]
        adjectives = [adjective[a] for a in (size, colour) if a]
        noun_phrase = " ".join([a[nom] for a in adjectives] + [nominative])
        noun_phrase_genitive = " ".join([a[gen] for a in adjectives] + [genitive])
        where = positions.get(position)
        if variant == 0:
            return f"{noun_phrase} {where}" if where else noun_phrase
        if variant == 1:
            return f"{picture_of} {noun_phrase_genitive}" + (f" {where}" if where else "")
        return f"{where or in_the_picture} {drawn[gender]} {noun_phrase}"
    return caption


_ru = _east_slavic(RU_ADJECTIVE, RU_NOUN, RU_POSITION, RU_DRAWN, "изображение", "на картинке")


# Arabic: the noun first, then its adjectives (colour nearest, then size: دائرة حمراء صغيرة), agreeing in gender;
# colour adjectives of the form أفعل have a feminine فعلاء (أحمر, حمراء). Everything indefinite, like the English.
# The existential verb agrees with its subject: يوجد مربع, توجد دائرة. ل (for/of) is written joined to the noun.
AR_ADJECTIVE = {"red": ("أحمر", "حمراء"), "orange": ("برتقالي", "برتقالية"), "yellow": ("أصفر", "صفراء"),
                "green": ("أخضر", "خضراء"), "blue": ("أزرق", "زرقاء"), "purple": ("بنفسجي", "بنفسجية"),
                "small": ("صغير", "صغيرة"), "large": ("كبير", "كبيرة")}  # (masculine, feminine)
AR_NOUN = {"circle": ("دائرة", "f"), "square": ("مربع", "m"), "triangle": ("مثلث", "m"), "star": ("نجمة", "f"),
           "heart": ("قلب", "m"), "cross": ("صليب", "m")}
AR_POSITION = {"left": "على اليسار", "right": "على اليمين", "top": "في الأعلى", "bottom": "في الأسفل",
               "centre": "في الوسط"}


def _ar(colour, shape, size, position, variant):
    noun, gender = AR_NOUN[shape]
    form = 0 if gender == "m" else 1
    noun_phrase = " ".join([noun] + [AR_ADJECTIVE[a][form] for a in (colour, size) if a])
    where = f" {AR_POSITION[position]}" if position else ""
    there_is = "يوجد" if gender == "m" else "توجد"
    return [f"{noun_phrase}{where}", f"صورة ل{noun_phrase}{where}", f"{there_is} {noun_phrase}{where}"][variant]


# Hindi: adjectives before the noun; those ending in -ā inflect (नीला तारा, but नीले तारे की तस्वीर, oblique before
# the postposition की), the others (लाल, नारंगी, बैंगनी) do not. All six nouns are masculine, and तारा also takes
# the oblique तारे. Word order is subject-object-verb, places first: बाईं ओर एक लाल वृत्त है.
HI_ADJECTIVE = {"red": ("लाल", "लाल"), "orange": ("नारंगी", "नारंगी"), "yellow": ("पीला", "पीले"),
                "green": ("हरा", "हरे"), "blue": ("नीला", "नीले"), "purple": ("बैंगनी", "बैंगनी"),
                "small": ("छोटा", "छोटे"), "large": ("बड़ा", "बड़े")}  # (direct, oblique), masculine singular
HI_NOUN = {"circle": ("वृत्त", "वृत्त"), "square": ("वर्ग", "वर्ग"), "triangle": ("त्रिभुज", "त्रिभुज"),
           "star": ("तारा", "तारे"), "heart": ("दिल", "दिल"), "cross": ("क्रॉस", "क्रॉस")}  # (direct, oblique)
HI_POSITION = {"left": "बाईं ओर", "right": "दाईं ओर", "top": "ऊपर", "bottom": "नीचे", "centre": "बीच में"}


def _hi(colour, shape, size, position, variant):
    def noun_phrase(case):
        return " ".join(["एक"] + [HI_ADJECTIVE[a][case] for a in (size, colour) if a] + [HI_NOUN[shape][case]])
    where = f"{HI_POSITION[position]} " if position else ""
    if variant == 0:
        return f"{where}{noun_phrase(0)}"
    if variant == 1:
        return f"{where}{noun_phrase(1)} की तस्वीर"
    return f"{where or 'तस्वीर में '}{noun_phrase(0)} है"


# German: after ein the adjective ending shows gender and case (mixed declension): ein roter Kreis (masculine),
# ein rotes Herz (neuter); after mit, dative: einem roten Kreis, einem roten Herzen (Herz is irregular). Orange and
# lila do not decline, so the declinable orangefarben and violett are used. The verb is second: links ist ... zu sehen.
DE_ADJECTIVE = {"red": "rot", "orange": "orangefarben", "yellow": "gelb", "green": "grün", "blue": "blau",
                "purple": "violett", "small": "klein", "large": "groß"}
DE_NOUN = {"circle": ("Kreis", "Kreis", "m"), "square": ("Quadrat", "Quadrat", "n"),
           "triangle": ("Dreieck", "Dreieck", "n"), "star": ("Stern", "Stern", "m"),
           "heart": ("Herz", "Herzen", "n"), "cross": ("Kreuz", "Kreuz", "n")}  # (nominative, dative, gender)
DE_POSITION = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "in der Mitte"}


def _de(colour, shape, size, position, variant):
    nominative, dative, gender = DE_NOUN[shape]
    stems = [DE_ADJECTIVE[a] for a in (size, colour) if a]
    nom = " ".join(["ein"] + [s + ("er" if gender == "m" else "es") for s in stems] + [nominative])
    dat = " ".join(["einem"] + [s + "en" for s in stems] + [dative])
    where = DE_POSITION.get(position)
    if variant == 0:
        return f"{nom} {where}" if where else nom
    if variant == 1:
        return f"ein Bild mit {dat}" + (f" {where}" if where else "")
    return f"{where} ist {nom} zu sehen" if where else f"zu sehen ist {nom}"


# French: un/une by the noun's gender; colours follow the noun and agree (un cercle vert, une étoile verte), except
# orange, a noun used as a colour, which does not; petit/grand go before the noun (une petite étoile rouge).
FR_ADJECTIVE = {"red": ("rouge", "rouge"), "orange": ("orange", "orange"), "yellow": ("jaune", "jaune"),
                "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "purple": ("violet", "violette"),
                "small": ("petit", "petite"), "large": ("grand", "grande")}  # (masculine, feminine)
FR_NOUN = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
           "star": ("étoile", "f"), "heart": ("cœur", "m"), "cross": ("croix", "f")}
FR_POSITION = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "centre": "au centre"}


def _fr(colour, shape, size, position, variant):
    noun, gender = FR_NOUN[shape]
    form = 0 if gender == "m" else 1
    words = [("un", "une")[form]] + ([FR_ADJECTIVE[size][form]] if size else []) + [noun, FR_ADJECTIVE[colour][form]]
    noun_phrase = " ".join(words)
    where = f" {FR_POSITION[position]}" if position else ""
    return [f"{noun_phrase}{where}", f"une image d'{noun_phrase}{where}", f"il y a {noun_phrase}{where}"][variant]


# Spanish: un/una by gender; colour then size after the noun, both agreeing (una estrella roja pequeña); naranja,
# verde, azul and grande have one form for both genders.
ES_ADJECTIVE = {"red": ("rojo", "roja"), "orange": ("naranja", "naranja"), "yellow": ("amarillo", "amarilla"),
                "green": ("verde", "verde"), "blue": ("azul", "azul"), "purple": ("morado", "morada"),
                "small": ("pequeño", "pequeña"), "large": ("grande", "grande")}  # (masculine, feminine)
ES_NOUN = {"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
           "star": ("estrella", "f"), "heart": ("corazón", "m"), "cross": ("cruz", "f")}
ES_POSITION = {"left": "a la izquierda", "right": "a la derecha", "top": "arriba", "bottom": "abajo",
               "centre": "en el centro"}


def _es(colour, shape, size, position, variant):
    noun, gender = ES_NOUN[shape]
    form = 0 if gender == "m" else 1
    noun_phrase = " ".join([("un", "una")[form], noun] + [ES_ADJECTIVE[a][form] for a in (colour, size) if a])
    where = f" {ES_POSITION[position]}" if position else ""
    return [f"{noun_phrase}{where}", f"una imagen de {noun_phrase}{where}", f"hay {noun_phrase}{where}"][variant]


# Italian: un/una by gender; colours follow the noun, rosso and giallo agree (una stella rossa), arancione, verde,
# blu and viola do not; piccolo/grande go before the noun (un piccolo cerchio rosso, una grande croce blu).
IT_ADJECTIVE = {"red": ("rosso", "rossa"), "orange": ("arancione", "arancione"), "yellow": ("giallo", "gialla"),
                "green": ("verde", "verde"), "blue": ("blu", "blu"), "purple": ("viola", "viola"),
                "small": ("piccolo", "piccola"), "large": ("grande", "grande")}  # (masculine, feminine)
IT_NOUN = {"circle": ("cerchio", "m"), "square": ("quadrato", "m"), "triangle": ("triangolo", "m"),
           "star": ("stella", "f"), "heart": ("cuore", "m"), "cross": ("croce", "f")}
IT_POSITION = {"left": "a sinistra", "right": "a destra", "top": "in alto", "bottom": "in basso",
               "centre": "al centro"}


def _it(colour, shape, size, position, variant):
    noun, gender = IT_NOUN[shape]
    form = 0 if gender == "m" else 1
    words = [("un", "una")[form]] + ([IT_ADJECTIVE[size][form]] if size else []) + [noun, IT_ADJECTIVE[colour][form]]
    noun_phrase = " ".join(words)
    where = f" {IT_POSITION[position]}" if position else ""
    return [f"{noun_phrase}{where}", f"un'immagine di {noun_phrase}{where}", f"c'è {noun_phrase}{where}"][variant]


# Ukrainian: as Russian (_east_slavic), adjectives agree in gender and case. Columns: nominative masculine,
# feminine, neuter; genitive masculine/neuter, feminine (after зображення, "a picture of"); синій is soft-stemmed
# (синя, синє, синього). The participle agrees: намальований хрест, намальована зірка, намальоване коло.
UK_ADJECTIVE = {
    "red": ("червоний", "червона", "червоне", "червоного", "червоної"),
    "orange": ("помаранчевий", "помаранчева", "помаранчеве", "помаранчевого", "помаранчевої"),
    "yellow": ("жовтий", "жовта", "жовте", "жовтого", "жовтої"),
    "green": ("зелений", "зелена", "зелене", "зеленого", "зеленої"),
    "blue": ("синій", "синя", "синє", "синього", "синьої"),
    "purple": ("фіолетовий", "фіолетова", "фіолетове", "фіолетового", "фіолетової"),
    "small": ("малий", "мала", "мале", "малого", "малої"),
    "large": ("великий", "велика", "велике", "великого", "великої"),
}
UK_NOUN = {"circle": ("коло", "кола", "n"), "square": ("квадрат", "квадрата", "m"),
           "triangle": ("трикутник", "трикутника", "m"), "star": ("зірка", "зірки", "f"),
           "heart": ("серце", "серця", "n"), "cross": ("хрест", "хреста", "m")}  # (nominative, genitive, gender)
UK_POSITION = {"left": "ліворуч", "right": "праворуч", "top": "вгорі", "bottom": "внизу", "centre": "у центрі"}
UK_DRAWN = {"m": "намальований", "f": "намальована", "n": "намальоване"}


_uk = _east_slavic(UK_ADJECTIVE, UK_NOUN, UK_POSITION, UK_DRAWN, "зображення", "на малюнку")


CAPTION = {"en": _en, "zh": _zh, "ja": _ja, "ko": _ko, "ru": _ru, "ar": _ar, "hi": _hi, "de": _de, "fr": _fr,
           "es": _es, "it": _it, "uk": _uk}
VARIANTS = 3


def caption(colour: str, shape: str, lang: str, size: str = None, position: str = None, variant: int = 0) -> str:
    """One caption; `size` and `position` are mentioned when given, `variant` (0-2) picks the phrasing."""
    return CAPTION[lang](colour, shape, size, position, variant)


def label(colour: str, shape: str, lang: str) -> str:
    """The zero-shot class label: "a red circle", "一个红色的圆形", "красный круг", "ein roter Kreis"."""
    return caption(colour, shape, lang)


def captions(scene: Scene, rng: random.Random, languages=LANGUAGES) -> dict:
    """One caption per language, all parallel: the same attributes mentioned (colour and shape always, size and
    position each at random), each in a phrasing drawn at random for its language."""
    size = scene.size if rng.random() < 0.5 else None
    position = scene.position if rng.random() < 0.5 else None
    return {lang: caption(scene.colour, scene.shape, lang, size, position, rng.randrange(VARIANTS))
            for lang in languages}


# --------------------------------------------------------------------------------------------------------- examples

EXAMPLES = [("yellow", "star"), ("blue", "heart"), ("green", "triangle"), ("purple", "cross")]  # the first held out


def save_examples(folder) -> list:
    """One picture per EXAMPLES class, large, drawn from a fixed seed, saved as folder/<colour>-<shape>.png."""
    from pathlib import Path
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (colour, shape) in enumerate(EXAMPLES):
        rng = random.Random(1000 + k)
        scene = sample_scene(rng, [(colour, shape)])
        while scene.size != "large":  # large, to be seen at a glance
            scene = sample_scene(rng, [(colour, shape)])
        paths.append(folder / f"{colour}-{shape}.png")
        render(scene).save(paths[-1])
    return paths


if __name__ == "__main__":
    import sys
    for path in save_examples(sys.argv[1] if len(sys.argv) > 1 else "examples/shapes"):
        print(path)
