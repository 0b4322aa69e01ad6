"""A procedurally generated 10-class, 32x32 RGB image set: no download, same shape as CIFAR-10.

How an image is made
--------------------
All randomness comes from ``torch.Generator``s seeded by ``seed`` (never the global RNG), so
a seed gives bit-identical images for a given platform and torch version. The seed is split
into three streams: class prototypes, training set, test set. The test set therefore does
not change with ``train_size``, and the two splits are independent draws from one
distribution.

1. Class prototypes. Each of the 10 classes owns ``modes`` Gabor prototypes (a sinusoidal
   grating under a Gaussian window), each with its own orientation (uniform in [0, pi)),
   spatial frequency (log-uniform, 2 to 8 cycles per 32 pixels) and colour (a uniformly
   random unit vector in RGB space). Prototypes are placed at random, so some pairs from
   different classes lie close together and differ only slightly in angle, frequency or hue.
2. The main pattern. A sample of class ``y`` takes one of ``y``'s prototypes at random and
   jitters it: orientation + N(0, ``orientation_jitter``) radians, frequency times
   exp(N(0, ``frequency_jitter``)), colour + N(0, ``colour_jitter``) per channel (then scaled
   back to unit length). With probability 1/2 it is mirrored left-right (orientation
   theta -> pi - theta), so the distribution is invariant to the horizontal flips of the
   standard augmentation. It gets a uniform random phase, a window centre uniform in the
   middle 16x16 pixels, a window std uniform in [4, 8] pixels and an amplitude ``a`` uniform
   in [0.6, 1]. At pixel (x, y) (column, row, pixel centres at k + 0.5) channel k holds
   ``a * exp(-r^2 / (2 std^2)) * sin(2 pi f d / 32 + phase) * colour[k]``, where ``r`` is the
   distance to the centre and ``d`` the offset from it along the orientation.
3. The distractor. A second pattern, made the same way (own prototype, jitter, mirror, phase,
   placement) from a uniformly chosen *other* class, is added at amplitude
   ``a * U(0, distractor)``. With ``distractor`` < 1 the labelled pattern is the stronger one.
4. Background and noise. Each image gets a colour cast uniform in [-``background``,
   ``background``] per channel, and every pixel of every channel i.i.d. N(0, ``noise``^2).
5. Quantisation. The sum ``v`` maps to pixels as ``round(255 * clip(0.5 + 0.25 v, 0, 1))``,
   stored as uint8 (N, 3, 32, 32); labels are int64.

Labels are balanced: each class gets ``n // 10`` samples (the first ``n % 10`` classes one
more), in random order. ``noise``, ``background`` and the amplitudes share one unit: the
largest main-pattern amplitude, 1.0.

Difficulty. The jitters make neighbouring classes overlap: with the defaults, a classifier
that knew each sample's exact orientation, frequency and colour would still err on about
1-4% of samples, depending on the seed (it also draws the prototypes). Noise, distractor and
background make those parameters hard to read off the pixels. Measured on seed 0 (SGD lr 0.1,
batch 128, flips and crops), a width-0.25 ResNet-20 is at about 50% training error after 500
iterations and 30% after 800, a plain-20 at about 60% and 48%, and a plain-56 still near
chance (89%) after 500: learnable, far from trivial, and deep plain nets lag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from resexp.data.raw import RawData

NUM_CLASSES = 10
SIZE = 32
CONTRAST = 0.25  # pixel = 0.5 + CONTRAST * value: keeps clipping rare at the default noise
CHUNK = 2048  # images rendered at once; bounds memory for large train_size


@dataclass(frozen=True)
class Knobs:
    """make_synthetic's difficulty keywords (see the module docstring)."""

    noise: float
    distractor: float
    orientation_jitter: float
    frequency_jitter: float
    colour_jitter: float
    background: float
    modes: int


KNOBS = tuple(field.name for field in fields(Knobs))  # read from the data config when present


def class_balance(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """int64 labels 0..num_classes-1, shuffled, each n // num_classes times (the first
    n % num_classes classes once more)."""
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    return labels[torch.randperm(n, generator=generator)]


def make_synthetic(
    train_size: int,
    test_size: int,
    seed: int,
    *,
    noise: float = 0.35,
    distractor: float = 0.7,
    orientation_jitter: float = 0.1,
    frequency_jitter: float = 0.1,
    colour_jitter: float = 0.1,
    background: float = 0.4,
    modes: int = 3,
) -> RawData:
    """Training and test sets drawn from the distribution described in the module docstring."""
    knobs = Knobs(noise, distractor, orientation_jitter, frequency_jitter, colour_jitter,
                  background, modes)
    # Sizes and knobs are checked by resexp.schema.SyntheticData.
    streams = torch.Generator().manual_seed(seed)
    seeds = torch.randint(0, 2**62, (3,), generator=streams).tolist()
    prototype_seed, train_seed, test_seed = seeds
    prototypes = _prototypes(modes, torch.Generator().manual_seed(prototype_seed))
    train_images, train_labels = _sample(train_size, prototypes, train_seed, knobs)
    test_images, test_labels = _sample(test_size, prototypes, test_seed, knobs)
    return RawData(
        train_images, train_labels, test_images, test_labels, NUM_CLASSES, 3, "synthetic"
    )


def _prototypes(modes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per class and mode: orientation, frequency (cycles per image) and unit RGB colour."""
    shape = (NUM_CLASSES, modes)
    theta = torch.rand(shape, generator=generator) * math.pi
    freq = 2.0 * torch.exp(torch.rand(shape, generator=generator) * math.log(4.0))  # 2 to 8
    colour = torch.nn.functional.normalize(torch.randn(*shape, 3, generator=generator), dim=-1)
    return {"theta": theta, "freq": freq, "colour": colour}


def _sample(
    n: int, prototypes: dict[str, torch.Tensor], seed: int, knobs: Knobs
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = class_balance(n, NUM_CLASSES, g)
    # Adding 1..9 mod 10 picks the distractor's class uniformly among the other classes.
    others = (labels + torch.randint(1, NUM_CLASSES, (n,), generator=g)) % NUM_CLASSES
    main = _pattern_params(labels, prototypes, g, knobs)
    extra = _pattern_params(others, prototypes, g, knobs)
    main_amp = 0.6 + 0.4 * torch.rand(n, generator=g)
    extra_amp = main_amp * knobs.distractor * torch.rand(n, generator=g)
    cast = (2 * torch.rand(n, 3, generator=g) - 1) * knobs.background

    images = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for start in range(0, n, CHUNK):
        part = slice(start, min(start + CHUNK, n))
        value = _render(main, part, main_amp[part]) + _render(extra, part, extra_amp[part])
        value += cast[part, :, None, None]
        value += knobs.noise * torch.randn(value.shape, generator=g)
        pixels = (0.5 + CONTRAST * value).clamp_(0, 1).mul_(255).round_()
        images[part] = pixels.to(torch.uint8)
    return images, labels


def _pattern_params(
    classes: torch.Tensor, prototypes: dict[str, torch.Tensor], g: torch.Generator, knobs: Knobs
) -> dict[str, torch.Tensor]:
    """One jittered prototype per sample, placed, phased and possibly mirrored."""
    n = len(classes)
    mode = torch.randint(0, knobs.modes, (n,), generator=g)
    jitter = torch.randn(n, generator=g)
    theta = prototypes["theta"][classes, mode] + knobs.orientation_jitter * jitter
    # A left-right mirror maps orientation theta to pi - theta.
    mirror = torch.rand(n, generator=g) < 0.5
    theta = torch.where(mirror, math.pi - theta, theta)
    jitter = torch.randn(n, generator=g)
    freq = prototypes["freq"][classes, mode] * torch.exp(knobs.frequency_jitter * jitter)
    jitter = torch.randn(n, 3, generator=g)
    colour = prototypes["colour"][classes, mode] + knobs.colour_jitter * jitter
    centre = SIZE / 4 + (SIZE / 2) * torch.rand(n, 2, generator=g)
    return {
        "theta": theta,
        "freq": freq,
        "colour": torch.nn.functional.normalize(colour, dim=-1),
        "phase": 2 * math.pi * torch.rand(n, generator=g),
        "cy": centre[:, 0],
        "cx": centre[:, 1],
        "width": 4.0 + 4.0 * torch.rand(n, generator=g),
    }


def _render(params: dict[str, torch.Tensor], part: slice, amplitude: torch.Tensor) -> torch.Tensor:
    """Gabor patches for the samples in ``part``: float (n, 3, SIZE, SIZE)."""
    p = {k: v[part, None, None] for k, v in params.items() if k != "colour"}  # over (y, x)
    steps = torch.arange(SIZE, dtype=torch.float32) + 0.5
    dy = steps[None, :, None] - p["cy"]
    dx = steps[None, None, :] - p["cx"]
    along = dx * torch.cos(p["theta"]) + dy * torch.sin(p["theta"])
    wave = torch.sin((2 * math.pi / SIZE) * p["freq"] * along + p["phase"])
    window = torch.exp((dx * dx + dy * dy) / (-2 * p["width"] ** 2))
    grey = (amplitude[:, None, None] * window * wave)[:, None]
    return grey * params["colour"][part, :, None, None]
