"""Training a translation network source modality -> target modality: NeMAR (geometry-preserving) or CycleGAN.

**NeMAR** (Arar et al., CVPR 2020). The translator ``T`` (source -> target) is trained jointly with a
registration network ``R`` (a small U-Net, :class:`~..unet.VoxelMorphUNet`, giving a displacement in voxels).
Each source crop is first moved by a random affine map (rotation, scale, shift), so source and target disagree
in geometry. ``R`` predicts the displacement ``phi`` that aligns ``T(a)`` to ``b``; the two orders must agree
with the target:

    L1(T(a) o phi, b) + L1(T(a o phi), b)        (translate-then-register, register-then-translate)

plus a least-squares GAN term (a :class:`~.network.PatchDiscriminator` on ``T(a)`` against real targets) and a
diffusion penalty on ``phi``. A translator that deformed anatomy could satisfy the first order but not the second,
so ``T`` learns to change the contrast only: after training, multimodal registration is monomodal between
``T(moving)`` and the fixed image. ``R`` is discarded; the engine registers. One motion escapes both orders: a
global shift of ``T``'s output commutes with ``phi`` except through the rotation part of the misalignment, so
it is only weakly penalised (measured on BrainWeb: the NeMAR-only translator left a 0.5 px / 0.4 deg bias).
When the training pairs are known to be aligned (``lambda_paired`` > 0), the un-moved crop adds
``L1(T(a_aligned), b)``, which fixes the translator's geometry exactly.

**CycleGAN** (Zhu et al., ICCV 2017): two generators (source -> target, target -> source) and two
discriminators, unpaired crops, cycle-consistency (L1, ``lambda_cycle``) and identity (``lambda_identity``)
terms. Nothing ties its output to the input's geometry but the cycle; it is the baseline NeMAR improves on.

Data: :class:`TranslationPair` objects, a source and a target image of one subject on one grid
(``(1, *shape)`` float tensors in [0, 1]; NeMAR needs them roughly aligned, CycleGAN draws them unpaired).
Each step draws ``batch`` random crops (flips and intensity jitter of the source) from a generator seeded by
``(seed, step)``: a run is reproducible. Validation (whole validation pairs, which should be aligned) reports the
L1 between ``T(source)`` and the target and the shift between them found by phase correlation (pixels/voxels):
a geometry-preserving translator keeps it near 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError
from ...metrics.regularisers import diffusion_regulariser_batch
from ...transforms.voxel import warp_voxels
from ..unet import VoxelMorphUNet
from .inference import translate_tensor
from .network import PatchDiscriminator, TranslationGenerator

__all__ = ["TranslationPair", "TranslationTrainConfig", "train_translation", "METHODS"]

METHODS = ("nemar", "cyclegan")


@dataclass
class TranslationPair:
    """A source and a target image of one subject on one grid: ``(1, *shape)`` float tensors in [0, 1]."""

    source: torch.Tensor
    target: torch.Tensor
    name: str = ""


@dataclass
class TranslationTrainConfig:
    """Training settings (what a model card records). Angles in degrees, shifts in pixels/voxels."""

    method: str = "nemar"
    steps: int = 1500
    batch: int = 4
    crop: int = 96
    lr: float = 2e-4
    seed: int = 0
    lambda_gan: float = 1.0
    lambda_recon: float = 20.0
    lambda_smooth: float = 2.0
    lambda_paired: float = 0.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 5.0
    misalign_degrees: float = 10.0
    misalign_shift: float = 6.0
    misalign_scale: float = 0.06
    validate_every: int = 100
    max_minutes: float = 0.0

    def validate(self) -> "TranslationTrainConfig":
        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.crop % 8 or self.crop < 16:
            raise InputError(f"crop must be a multiple of 8 and >= 16, got {self.crop}")
        if self.steps < 1 or self.batch < 1:
            raise InputError("steps and batch must be >= 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _check_pairs(pairs: list[TranslationPair], dim: int, crop: int) -> None:
    if not pairs:
        raise InputError("no training pairs")
    for p in pairs:
        if p.source.shape != p.target.shape or p.source.dim() != dim + 1 or p.source.shape[0] != 1:
            raise InputError(f"{p.name}: source and target must be (1, *{dim}D shape) on one grid, got "
                             f"{tuple(p.source.shape)} and {tuple(p.target.shape)}")
        if min(p.source.shape[1:]) < crop:
            raise InputError(f"{p.name}: {tuple(p.source.shape[1:])} is smaller than the crop {crop}")
        for t, what in ((p.source, "source"), (p.target, "target")):
            if not bool(torch.isfinite(t).all()) or float(t.max() - t.min()) == 0:
                raise InputError(f"{p.name}: the {what} image is constant or not finite")


def _crop(pair: TranslationPair, crop: int, rng: np.random.Generator, which: str | None = None):
    """A random crop (same place in both images) with enough foreground; ``which``: only one of the images."""
    shape = pair.source.shape[1:]
    for _ in range(20):
        start = [int(rng.integers(0, n - crop + 1)) for n in shape]
        window = (slice(None),) + tuple(slice(s, s + crop) for s in start)
        if float(pair.target[window].gt(0.05).float().mean()) > 0.3:
            break
    if which is None:
        return pair.source[window], pair.target[window]
    return getattr(pair, which)[window]


def _flip(t: torch.Tensor, flips: list[bool]) -> torch.Tensor:
    axes = [k + 1 for k, f in enumerate(flips) if f]
    return t.flip(axes) if axes else t


def _jitter(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Gamma, contrast and noise of a [0, 1] source crop (the translator must not depend on exact intensities)."""
    t = t.clamp(0, 1) ** float(np.exp(rng.uniform(-0.25, 0.25)))
    t = t * float(rng.uniform(0.9, 1.1)) + float(rng.normal(0, 0.02, 1)[0]) * torch.randn_like(t)
    return t.clamp(0, 1)


def _random_affine(batch: int, dim: int, config: TranslationTrainConfig, crop: int,
                   rng: np.random.Generator) -> torch.Tensor:
    """``(batch, dim, dim + 1)`` ``affine_grid`` matrices: rotation (about random axes), isotropic scale, shift."""
    thetas = []
    for _ in range(batch):
        skew = np.zeros((dim, dim))
        angles = rng.normal(0, 1, dim * (dim - 1) // 2)
        angles *= math.radians(config.misalign_degrees) * rng.uniform(0, 1) / max(np.linalg.norm(angles), 1e-9)
        iu = np.triu_indices(dim, 1)
        skew[iu] = angles
        skew -= skew.T
        rotation = torch.matrix_exp(torch.as_tensor(skew)).numpy()
        scale = 1.0 + rng.uniform(-config.misalign_scale, config.misalign_scale)
        shift = rng.uniform(-1, 1, dim) * config.misalign_shift * 2.0 / crop  # normalised units
        thetas.append(np.concatenate([rotation * scale, shift[:, None]], axis=1))
    return torch.as_tensor(np.stack(thetas), dtype=torch.float32)


def _batch(pairs: list[TranslationPair], config: TranslationTrainConfig, step: int, dim: int, device: torch.device,
           paired: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sources, targets, aligned sources)`` ``(batch, 1, *crop)``: paired crops (NeMAR; the source moved by a
    random affine, the aligned one as drawn) or independent ones (CycleGAN; the third is the first)."""
    rng = np.random.default_rng([config.seed, step])
    sources, targets = [], []
    for _ in range(config.batch):
        pair = pairs[int(rng.integers(len(pairs)))]
        flips = [bool(rng.integers(2)) for _ in range(dim)]
        if paired:
            a, b = _crop(pair, config.crop, rng)
        else:
            a = _crop(pair, config.crop, rng, "source")
            b = _crop(pairs[int(rng.integers(len(pairs)))], config.crop, rng, "target")
        sources.append(_jitter(_flip(a, flips), rng))
        targets.append(_flip(b, flips))
    aligned, b = torch.stack(sources).to(device), torch.stack(targets).to(device)
    a = aligned
    if paired and (config.misalign_degrees or config.misalign_shift or config.misalign_scale):
        theta = _random_affine(config.batch, dim, config, config.crop, rng).to(device)
        grid = F.affine_grid(theta, list(a.shape), align_corners=True)
        a = F.grid_sample(a, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return a, b, aligned


def _gan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    """The length (pixels/voxels) of the translation between two images, by phase correlation (1/10 voxel)."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(b, a, upsample_factor=10, normalization=None)
    return float(np.linalg.norm(shift))


def _validate(net: TranslationGenerator, pairs: list[TranslationPair], device: torch.device) -> dict:
    if not pairs:
        return {}
    l1, shifts = [], []
    for p in pairs:
        out = translate_tensor(net, p.source.to(device)).cpu()
        l1.append(float((out - p.target).abs().mean()))
        shifts.append(_shift(out[0].numpy(), p.target[0].numpy()))
    return {"val_l1": round(float(np.mean(l1)), 4), "val_shift_px": round(float(np.max(shifts)), 3)}


def train_translation(net: TranslationGenerator, pairs: list[TranslationPair], val_pairs: list[TranslationPair],
                      config: TranslationTrainConfig, device: str | torch.device = "cpu",
                      progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` (source -> target) by ``config.method``; returns the figures a model card records (validation
    before and after, the loss history, the time)."""
    config.validate()
    device = torch.device(device)
    dim = net.dim
    _check_pairs(pairs, dim, config.crop)
    if val_pairs:
        _check_pairs(val_pairs, dim, 8)
    torch.manual_seed(config.seed)
    net.to(device)
    disc = PatchDiscriminator(dim, channels=net.config["channels"]).to(device)
    second: list[torch.nn.Module] = []
    if config.method == "nemar":
        reg = VoxelMorphUNet(dim, 2, 16, (16, 32, 32, 32), (16,), norm="instance").to(device)
        head = reg.net[1].final_conv_out.conv
        torch.nn.init.normal_(head.weight, 0.0, 1e-5)  # starts at the identity
        torch.nn.init.zeros_(head.bias)
        second = [reg]
    else:
        inverse = TranslationGenerator(**net.config).to(device)
        disc_source = PatchDiscriminator(dim, channels=net.config["channels"]).to(device)
        second = [inverse]
    g_params = [p for m in [net] + second for p in m.parameters()]
    d_modules = [disc] + ([disc_source] if config.method == "cyclegan" else [])
    d_params = [p for m in d_modules for p in m.parameters()]
    opt_g = torch.optim.Adam(g_params, lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d_params, lr=config.lr, betas=(0.5, 0.999))
    decay = lambda s: 1.0 if s < config.steps // 2 else max(0.0, 2.0 * (1 - s / config.steps))  # noqa: E731
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (opt_g, opt_d)]
    start = time.perf_counter()
    net.eval()
    initial = _validate(net, val_pairs, device)
    history: list[dict] = []
    step = 0
    for step in range(1, config.steps + 1):
        for m in [net, disc] + second + d_modules:
            m.train()
        a, b, aligned = _batch(pairs, config, step, dim, device, paired=config.method == "nemar")
        terms: dict[str, torch.Tensor] = {}
        if config.method == "nemar":
            fake = net(a)
            phi = reg(torch.cat([fake, b], dim=1))
            terms["translate_register"] = F.l1_loss(warp_voxels(fake, phi), b)
            terms["register_translate"] = F.l1_loss(net(warp_voxels(a, phi)), b)
            terms["smooth"] = diffusion_regulariser_batch(phi)
            terms["gan"] = _gan(disc(fake), True)
            loss_g = (config.lambda_recon * (terms["translate_register"] + terms["register_translate"])
                      + config.lambda_smooth * terms["smooth"] + config.lambda_gan * terms["gan"])
            if config.lambda_paired:
                terms["paired"] = F.l1_loss(net(aligned), b)
                loss_g = loss_g + config.lambda_paired * terms["paired"]
            fakes = [(disc, b, fake)]
        else:
            fake, fake_source = net(a), inverse(b)
            terms["cycle"] = F.l1_loss(inverse(fake), a) + F.l1_loss(net(fake_source), b)
            terms["identity"] = F.l1_loss(net(b), b) + F.l1_loss(inverse(a), a)
            terms["gan"] = _gan(disc(fake), True) + _gan(disc_source(fake_source), True)
            loss_g = (config.lambda_cycle * terms["cycle"] + config.lambda_identity * terms["identity"]
                      + config.lambda_gan * terms["gan"])
            fakes = [(disc, b, fake), (disc_source, a, fake_source)]
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        loss_d = sum(0.5 * (_gan(d(real), True) + _gan(d(f.detach()), False)) for d, real, f in fakes)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        for s in schedules:
            s.step()
        value = float(loss_g.detach())
        if not math.isfinite(value):
            raise InputError(f"training diverged at step {step} (loss {value}); lower the learning rate")
        if step % config.validate_every == 0 or step == config.steps:
            net.eval()
            entry = {"step": step, "loss_g": round(value, 4), "loss_d": round(float(loss_d.detach()), 4),
                     **{k: round(float(v.detach()), 4) for k, v in terms.items()},
                     **_validate(net, val_pairs, device), "minutes": round((time.perf_counter() - start) / 60, 2)}
            history.append(entry)
            if progress is not None:
                progress(entry)
        if config.max_minutes and time.perf_counter() - start > 60 * config.max_minutes:
            break
    net.eval()
    return {"steps_done": step, "initial_validation": initial, "final_validation": _validate(net, val_pairs, device),
            "history": history, "time_s": round(time.perf_counter() - start, 1)}
