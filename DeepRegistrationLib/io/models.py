"""Model folders of every family: ``weights.pt`` (a state dict, loaded with ``torch.load(weights_only=True)``) +
``model.json``; and where a model name is looked up.

The model card (``model.json``) holds what is needed to use the weights correctly and to know where they
come from: ``name``, ``architecture`` (the network's constructor parameters, e.g. ``VoxelMorphNet.config``),
``input`` (grid shape, spacing, orientation, intensity normalisation), ``training`` (data, exact command,
steps, validation Dice), ``licence`` and ``sha256`` of the weights file. :func:`load_model` verifies the
checksum and the architecture and refuses a mismatch with a message naming the file.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from ..errors import InputError
from .atomic import atomic_output_dir
from .checksums import file_sha256

__all__ = ["save_model", "load_model", "models_dirs", "find_model", "WEIGHTS", "CARD", "MAX_MODEL_BYTES", "NETWORKS", "cached_model"]

WEIGHTS = "weights.pt"
CARD = "model.json"
MAX_MODEL_BYTES = 10 * 1024 * 1024  # bundled models stay small
#: The network classes a card may name, as ``module:class`` (imported when a model of that network is loaded).
NETWORKS = {"VoxelMorphNet": "DeepRegistrationLib.methods.voxelmorph.network:VoxelMorphNet",
            "LearnedMetricNet": "DeepRegistrationLib.methods.learned_metric.network:LearnedMetricNet",
            "VesselNet": "DeepRegistrationLib.methods.retina.vessel_net:VesselNet",
            "CorrelationNet": "DeepRegistrationLib.methods.retina.correlation_net:CorrelationNet",
            "FlowRefinementNet": "DeepRegistrationLib.methods.retina.flow_net:FlowRefinementNet",
            "KeypointNet": "DeepRegistrationLib.methods.retina.keypoint_net:KeypointNet",
            "TranslationGenerator": "DeepRegistrationLib.methods.translation.network:TranslationGenerator"}
_REQUIRED = ("name", "network", "architecture", "input", "training", "licence")


def save_model(net: torch.nn.Module, folder: str | os.PathLike, card: dict) -> Path:
    """Write ``net``'s weights and its card (``sha256`` and ``architecture`` filled in) to ``folder``, atomically."""
    network = type(net).__name__
    if network not in NETWORKS:
        raise InputError(f"cannot save a {network}: known networks are {sorted(NETWORKS)}")
    card = {**card, "network": network, "architecture": dict(net.config)}
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise InputError(f"the model card lacks {missing}")
    folder = Path(folder)
    with atomic_output_dir(folder) as tmp:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp / WEIGHTS)
        size = (tmp / WEIGHTS).stat().st_size
        card["sha256"] = file_sha256(tmp / WEIGHTS)
        card["weights_bytes"] = size
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return folder


def models_dirs() -> list[Path]:
    """Where models are looked up by name: ``$DEEPREG_MODELS`` (``os.pathsep``-separated), then the bundled
    models shipped in the package (:mod:`DeepRegistrationLib.resources`)."""
    from ..resources import bundled_models_dir

    folders = [Path(p) for p in os.environ.get("DEEPREG_MODELS", "").split(os.pathsep) if p]
    folders.append(bundled_models_dir())
    return folders


def find_model(name_or_path: str) -> Path:
    """The model folder of a name (``voxelmorph-brain``) or a path; a clear error when there is none."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() or any(sep in name_or_path for sep in ("/", os.sep)):
        if not path.is_dir():
            raise InputError(f"{path}: model folder not found")
        return path
    for folder in models_dirs():
        if (folder / name_or_path).is_dir():
            return folder / name_or_path
    bundled = sorted(p.name for p in models_dirs()[-1].iterdir() if (p / CARD).is_file())
    raise InputError(f"model {name_or_path!r} not found in {[str(f) for f in models_dirs()]} (bundled models: "
                     f"{', '.join(bundled)}; train another with 'deepreg train', then put its folder in "
                     "$DEEPREG_MODELS or give its path)")


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu",
               network: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The network of a model folder (in eval mode) and its card; every inconsistency is a clear error, and so
    is a model of another ``network`` than the one asked for (e.g. a VoxelMorph model given as a metric)."""
    folder = Path(folder)
    weights, card_path = folder / WEIGHTS, folder / CARD
    for path in (card_path, weights):
        if not path.is_file():
            raise InputError(f"{path}: model file not found")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{card_path}: not a valid model card ({err})") from None
    missing = [k for k in _REQUIRED + ("sha256",) if k not in card]
    if missing:
        raise InputError(f"{card_path}: the model card lacks {missing}")
    actual = file_sha256(weights)
    if actual != card["sha256"]:
        raise InputError(f"{weights}: checksum mismatch (sha256 {actual[:12]}..., the card says "
                         f"{str(card['sha256'])[:12]}...): the file is corrupt or not the one the card describes")
    if network is not None and card["network"] != network:
        raise InputError(f"{folder}: a {card['network']} model ({card.get('name')!r}), not a {network}: "
                         "wrong model for this use")
    target = NETWORKS.get(card["network"])
    if target is None:
        raise InputError(f"{card_path}: unknown network {card['network']!r} (known: {sorted(NETWORKS)})")
    module, _, cls = target.partition(":")
    try:
        net = getattr(importlib.import_module(module), cls)(**card["architecture"])
    except TypeError as err:
        raise InputError(f"{card_path}: architecture parameters not understood ({err})") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise InputError(f"{weights}: cannot read the weights ({type(err).__name__})") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise InputError(f"{weights}: the weights do not match the architecture in {card_path.name} "
                         f"({card['architecture']}): {first}") from None
    return net.to(device).eval(), card


_CACHE: dict[tuple[str, str, float, str | None], tuple[torch.nn.Module, dict]] = {}


def cached_model(folder: str | os.PathLike, device: str | torch.device = "cpu",
                 network: str | None = None) -> tuple[torch.nn.Module, dict]:
    """:func:`load_model`, kept for the process (loaded again when the weights file changes)."""
    folder = Path(folder)
    weights = folder / WEIGHTS
    key = (str(folder.resolve()), str(device), weights.stat().st_mtime if weights.is_file() else 0.0, network)
    if key not in _CACHE:
        _CACHE[key] = load_model(folder, device, network=network)
    return _CACHE[key]
