"""Running a translation model: a whole image into the target modality, the ``translate`` stage and its checks.

The model folder (:mod:`DeepRegistrationLib.io.models`) holds a :class:`~.network.TranslationGenerator` and its
card: ``input.dim``, ``input.source_modality`` / ``target_modality``, ``input.spacing_mm`` (the training images'
spacing). The image is translated on its own grid when its spacing is within a factor 1.5 of the training one;
otherwise it is resampled to the training spacing (same extent, direction and centre), translated, and resampled
back onto its own grid: the output is always on the input's grid, in [0, 1] (the network's sigmoid), LPS mm
geometry unchanged. The translation never moves anatomy by construction of the NeMAR training; it changes
intensities only.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...image import Image
from ...intensity import normalise_unit_range
from ...io.models import cached_model, find_model
from .kinds import TranslateSettings
from .network import TranslationGenerator

__all__ = ["translate_tensor", "translate_image", "check_stage_inputs", "run_translate_stage", "load_translator",
           "needs_resampling"]

#: Largest ratio between an image's spacing and the model's training spacing translated without resampling.
SPACING_TOLERANCE = 1.5


@torch.no_grad()
def translate_tensor(net: TranslationGenerator, image: torch.Tensor) -> torch.Tensor:
    """``net`` on a whole ``(1, *shape)`` image in [0, 1] of any size (edge-padded to the network's multiple and
    cropped back); same shape out."""
    shape = image.shape[1:]
    pad: list[int] = []
    for n in reversed(shape):
        pad += [0, -n % net.multiple]
    x = image[None]
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    out = net(x)[0]
    return out[(slice(None),) + tuple(slice(0, n) for n in shape)]


def load_translator(name_or_path: str, device: torch.device | str = "cpu") -> tuple[TranslationGenerator, dict]:
    """The translation network of a model name or folder (cached for the process) and its card; a model of another
    network (a VoxelMorph or vessel model) is refused by name."""
    return cached_model(find_model(name_or_path), device, network="TranslationGenerator")


def translate_image(name_or_path: str, image: Image, device: torch.device | str = "cpu") -> tuple[Image, dict]:
    """``image`` (single channel, any intensities) translated by the model into its target modality: on the
    image's grid, float32 in [0, 1]; and figures (model, modalities, whether it was resampled, time)."""
    start = time.perf_counter()
    net, card = load_translator(name_or_path, device)
    _check_image(image, card)
    source = normalise_unit_range(image)
    resample = needs_resampling(image, card)
    if resample:
        source = source.resample_to(image.grid.centred_at_spacing(card["input"]["spacing_mm"], min_size=8))
    out = translate_tensor(net, source.data.float().to(device)).cpu()
    translated = source.with_data(out)
    if resample:
        translated = translated.resample_to(image.grid)
    translated.name = f"{image.name} ({card['input']['target_modality']}-like, {card['name']})"
    figures = {"translator": card["name"], "source_modality": card["input"]["source_modality"],
               "target_modality": card["input"]["target_modality"], "resampled": resample,
               "translate_s": time.perf_counter() - start}
    return translated, figures


def needs_resampling(image: Image, card: dict) -> bool:
    """Whether ``image``'s spacing is off the model's training spacing by more than :data:`SPACING_TOLERANCE`."""
    ratio = np.asarray(image.grid.spacing, dtype=float) / np.asarray(card["input"]["spacing_mm"], dtype=float)
    return bool(np.any(ratio > SPACING_TOLERANCE) or np.any(ratio < 1 / SPACING_TOLERANCE))


def _check_image(image: Image, card: dict) -> None:
    dim = card["input"]["dim"]
    if image.dim != dim:
        raise InputError(f"{image.name}: the image is {image.dim}D but the translation model {card['name']!r} "
                         f"is {dim}D")
    if image.num_channels != 1:
        raise InputError(f"{image.name}: the translation model takes one channel, the image has {image.num_channels}")
    image.check_finite()


def check_stage_inputs(settings: TranslateSettings, fixed: Image, moving: Image, device: torch.device) -> list[str]:
    """The registry's input check of a ``translate`` stage: the model loads (checksum, network kind) and takes the
    moving image (its dimension); a warning when the image is resampled to the model's spacing."""
    _, card = load_translator(settings.network, device)
    _check_image(moving, card)
    if needs_resampling(moving, card):
        return [f"{moving.name}: spacing {np.round(moving.grid.spacing, 3).tolist()} mm differs from the translation "
                f"model's {card['input']['spacing_mm']} mm; the image is resampled to it for the translation"]
    return []


def run_translate_stage(settings: TranslateSettings, fixed: Image, moving: Image,
                        device: torch.device) -> tuple[Image, dict]:
    """The registry's runner of an ``image`` stage: the moving image (normalised) translated into the fixed image's
    modality and normalised again; every later stage sees it instead of the moving image."""
    translated, figures = translate_image(settings.network, moving, device)
    return normalise_unit_range(translated), figures
