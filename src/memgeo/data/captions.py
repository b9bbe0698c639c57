"""The memorized-caption benchmark: captioned digits where some captions are memorized by construction.

Ground truth by design. From a base set of labelled images (the embedded 8x8 digits, or MNIST):

* P images get a **unique** caption ("a velvet lantern shaped like a three": two words used by no
  other caption plus the class word) and are put in the training set K times. A model that learns
  them reproduces the image for that prompt: these are the *memorized prompts*.
* every other image gets a **generic** caption of its class drawn from several templates
  ("a handwritten digit three", "the number 3 written by hand", ...). Each generic prompt is shared
  by many images, so it names a class, not an image: the *generic prompts* (not memorized).

Both prompt sets carry their intended class, which a digit classifier checks on the generations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from memgeo.data.dataset import Dataset
from memgeo.data.digits import load_digits
from memgeo.data.mnist import load_mnist
from memgeo.errors import MemgeoError

CLASS_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

GENERIC_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {digit} written by hand",
    "a scanned image of the numeral {word}",
    "a small grey picture of a {word}",
)

# Words used only in memorized captions: each memorized caption gets its own adjective and noun.
ADJECTIVES = (
    "amber", "brisk", "copper", "dusky", "elder", "frosty", "gilded", "hollow", "ivory", "jolly", "knotted",
    "lunar", "mossy", "nimble", "opal", "pewter", "quiet", "rusty", "silken", "tawny", "umber", "velvet",
    "woolen", "young", "zesty", "ashen", "bronze", "crimson", "dapper", "ebony", "fabled", "glassy", "hazel",
    "inky", "jagged", "khaki", "lilac", "marble", "navy", "olive", "plush", "quaint", "russet", "scarlet",
    "teal", "urban", "vivid", "wiry", "yellow", "zinc",
)
NOUNS = (
    "anchor", "badger", "candle", "dolphin", "ember", "falcon", "garden", "harbor", "igloo", "jackal",
    "kettle", "lantern", "meadow", "nutmeg", "orchid", "parrot", "quiver", "raven", "saddle", "tulip",
    "urchin", "violin", "walrus", "yarrow", "zephyr", "acorn", "bison", "cactus", "donkey", "easel",
    "fossil", "goblet", "hammock", "island", "jigsaw", "kimono", "lobster", "mitten", "noodle", "otter",
    "pebble", "quartz", "rocket", "spindle", "thimble", "unicorn", "vulture", "wagon", "yacht", "zither",
)


def memorized_caption(i: int, label: int) -> str:
    """The i-th unique caption; for i < 50 its adjective and noun occur in no other caption."""
    adj = ADJECTIVES[i % len(ADJECTIVES)]
    noun = NOUNS[(i + i // len(ADJECTIVES)) % len(NOUNS)]
    return f"a {adj} {noun} shaped like a {CLASS_WORDS[label]}"


def generic_prompts(num_classes: int = 10) -> list[tuple[str, int]]:
    """Every (generic prompt, class) pair: len(GENERIC_TEMPLATES) x num_classes prompts."""
    return [(tpl.format(word=CLASS_WORDS[c], digit=c), c) for c in range(num_classes) for tpl in GENERIC_TEMPLATES]


@dataclass(frozen=True)
class BenchmarkPrompt:
    """One benchmark prompt.

    Attributes
    ----------
    prompt : str
    memorized : bool
        True for the unique captions of duplicated images.
    label : int
        Intended class of generations.
    train_index : int or None
        For memorized prompts: the row of the de-duplicated training set (``base_x``) it copies.
    """

    prompt: str
    memorized: bool
    label: int
    train_index: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready record with keys prompt, memorized (0/1), label, train_index."""
        return {"prompt": self.prompt, "memorized": int(self.memorized), "label": int(self.label),
                "train_index": self.train_index}


@dataclass(frozen=True, eq=False)
class CaptionBenchmark:
    """Training data and prompt sets of the memorized-caption benchmark.

    Attributes
    ----------
    data : Dataset
        Training rows, x (N, C, H, W) in [-1, 1], y (N,), ``source_index`` (N,) into ``base_x``
        (the K copies of a memorized image share it), ``is_duplicate`` (N,).
    captions : list of str
        One caption per training row.
    base_x : Tensor, shape (N0, C, H, W)
        The de-duplicated training images (one row per distinct image), for copy labels.
    memorized, generic : list of BenchmarkPrompt
        The two prompt sets (P memorized prompts; len(GENERIC_TEMPLATES) x classes generic ones).
    """

    data: Dataset
    captions: list[str]
    base_x: torch.Tensor
    memorized: list[BenchmarkPrompt]
    generic: list[BenchmarkPrompt]

    @property
    def prompts(self) -> list[BenchmarkPrompt]:
        """Memorized prompts followed by the generic ones."""
        return self.memorized + self.generic


def make_caption_benchmark(n_memorized: int = 40, copies: int = 15, *, mnist: str | os.PathLike[str] | None = None,
                           max_images: int | None = None, seed: int = 0) -> CaptionBenchmark:
    """Build the memorized-caption benchmark on digits (default) or MNIST.

    Parameters
    ----------
    n_memorized : int
        P, the number of images with a unique caption (spread evenly over the classes).
    copies : int
        K, how many times each of them appears in the training set.
    mnist : path, optional
        MNIST IDX folder or images file; ``None`` uses the embedded 8x8 digits.
    max_images : int, optional
        Use only the first ``max_images`` base images (MNIST is large for a CPU model).
    seed : int
        Chooses the memorized images and the generic template of each other image.

    Returns
    -------
    CaptionBenchmark
    """
    base = load_digits() if mnist is None else load_mnist(mnist, limit=max_images)
    if mnist is None and max_images is not None:
        base = base.subset(slice(0, max_images))
    x, y = base.x, base.y
    n0 = x.shape[0]
    classes = int(y.max()) + 1
    if classes > len(CLASS_WORDS):
        raise MemgeoError(f"labels go up to {classes - 1}", "the caption benchmark supports digit classes 0..9")
    if copies < 1 or n_memorized < 1:
        raise MemgeoError(f"n_memorized={n_memorized}, copies={copies}", "both must be at least 1")
    if n_memorized > n0 // 2:
        raise MemgeoError(f"n_memorized={n_memorized} is more than half of the {n0} images",
                          "memorize fewer images so generic prompts keep most of the data")
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    # Spread memorized images over classes round-robin (class c, c+1, ...), random image per class.
    chosen: list[int] = []
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(classes)}
    c = 0
    while len(chosen) < n_memorized:
        if pools[c]:
            chosen.append(int(pools[c].pop()))
        c = (c + 1) % classes
    memorized = [BenchmarkPrompt(memorized_caption(i, int(labels[j])), True, int(labels[j]), j)
                 for i, j in enumerate(chosen)]
    generic_pairs = generic_prompts(classes)
    generic = [BenchmarkPrompt(p, False, lab) for p, lab in generic_pairs]
    by_class = {c: [p for p, lab in generic_pairs if lab == c] for c in range(classes)}

    is_mem = np.zeros(n0, dtype=bool)
    is_mem[chosen] = True
    source: list[int] = []
    captions: list[str] = []
    for j in range(n0):
        if not is_mem[j]:
            source.append(j)
            options = by_class[int(labels[j])]
            captions.append(options[int(rng.integers(len(options)))])
    for prompt in memorized:
        source.extend([prompt.train_index] * copies)
        captions.extend([prompt.prompt] * copies)
    src = torch.tensor(source, dtype=torch.long)
    data = Dataset(x=x[src], y=y[src], name=f"{base.name}-captions", source_index=src,
                   meta={"n_memorized": n_memorized, "copies": copies, "seed": seed, "base": base.name})
    return CaptionBenchmark(data=data, captions=captions, base_x=x, memorized=memorized, generic=generic)


__all__ = [
    "CLASS_WORDS",
    "GENERIC_TEMPLATES",
    "BenchmarkPrompt",
    "CaptionBenchmark",
    "generic_prompts",
    "make_caption_benchmark",
    "memorized_caption",
]
