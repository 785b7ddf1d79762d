"""Modality translation beside NMI: does a translated PD register to the T1 as precisely, and did the translation
move anatomy? Prints Markdown tables; writes ``Docs/translation_brainweb.png`` (input | translated | target |
differences).

Cases (2D BrainWeb T1 / PD, ITK's example slices: one simulated anatomy, so aligned):
* geometry: the aligned PD translated, then registered to the T1 by the monomodal ``rigid`` preset (NCC) from the
  identity: the answer should be the identity (a translator that moved anatomy shows here);
* known transforms: T1 vs PD shifted (13, 17) px and vs PD rotated 10 deg and shifted (ITK's answers), by
  ``multimodal-rigid`` (NMI) and by ``multimodal-rigid-translated`` with each model given; mean point error over
  the fixed image (px) and time (2 cores);
* capture range: T1 vs PD under rigid offsets of k x (5 deg, 5 px, 5 px), k = 1..12; a run succeeds below 1 px.

The bundled model was trained on the aligned (unshifted) BrainWeb pair itself (the only real PD/T1 pair here), so
these cases test the geometry and the registration, not generalisation to unseen anatomy.

Run: ``.venv/bin/python benchmarks/translation.py [--models translation-brainweb-pd-t1 path/to/other]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from learned_metric import ROOT, png, point_error

import DeepRegistrationLib as dr  # noqa: E402
from DeepRegistrationLib.registration import load_preset, register  # noqa: E402
from DeepRegistrationLib.transforms import RigidTransform  # noqa: E402

MODEL = "translation-brainweb-pd-t1"


def methods(models: list[str]) -> list[tuple[str, str, list[str]]]:
    out = [("NMI (`multimodal-rigid`)", "multimodal-rigid", [])]
    for model in models:
        label = f"translated by `{Path(model).name}`, NCC (`multimodal-rigid-translated`)"
        out.append((label, "multimodal-rigid-translated", [f"stages.0.network={model}"]))
    return out


def geometry(models: list[str]) -> list[str]:
    from DeepRegistrationLib.methods.translation.inference import translate_image

    t1, pd = png("BrainT1SliceBorder20.png"), png("BrainProtonDensitySliceBorder20.png")
    lines = ["| model | L1 to the T1 (PD: {:.3f}) | identity found by NCC: deg, px | time to translate |",
             "|---|---|---|---|"]
    from DeepRegistrationLib.intensity import normalise_unit_range

    target = normalise_unit_range(t1).data[0]
    lines[0] = lines[0].format(float((normalise_unit_range(pd).data[0] - target).abs().mean()))
    for model in models:
        start = time.perf_counter()
        translated, _ = translate_image(model, pd)
        seconds = time.perf_counter() - start
        d = register(t1, translated, load_preset("rigid"), device="cpu", initialise="center").transform.describe()
        lines.append(f"| `{Path(model).name}` | {float((translated.data[0] - target).abs().mean()):.3f} | "
                     f"{d['angles_deg'][0]:.3f} deg, ({d['translation_mm'][0]:.3f}, {d['translation_mm'][1]:.3f}) px | "
                     f"{seconds:.2f} s |")
    return lines


def known(models: list[str]) -> list[str]:
    t1 = png("BrainT1SliceBorder20.png")
    center = t1.grid.center()
    cases = [("T1 vs PD shifted (13, 17) px", "BrainProtonDensitySliceShifted13x17y.png", (0.0, 13.0, 17.0)),
             ("T1 vs PD rotated 10 deg, shifted", "BrainProtonDensitySliceR10X13Y17.png", (10.0, 13.09, 15.92))]
    lines = ["| case | method | result | mean error (px) | time |", "|---|---|---|---|---|"]
    for title, name, (angle, tx, ty) in cases:
        truth = RigidTransform([np.radians(angle)], [tx, ty], center=center)
        for label, preset, overrides in methods(models):
            register(t1, png(name), load_preset(preset, overrides), device="cpu", initialise="center")  # warm
            start = time.perf_counter()
            result = register(t1, png(name), load_preset(preset, overrides), device="cpu", initialise="center")
            seconds = time.perf_counter() - start
            d = result.transform.describe()
            lines.append(f"| {title} | {label} | {d['angles_deg'][0]:.2f} deg, ({d['translation_mm'][0]:.2f}, "
                         f"{d['translation_mm'][1]:.2f}) px | {point_error(result, truth, t1.grid):.3f} | "
                         f"{seconds:.2f} s |")
    return lines


def capture(models: list[str]) -> list[str]:
    t1, pd = png("BrainT1SliceBorder20.png"), png("BrainProtonDensitySliceBorder20.png")
    center = t1.grid.center()
    ks = range(1, 13)
    lines = ["| offset k: (5k deg, 5k px, 5k px) | " + " | ".join(str(k) for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    for label, preset, overrides in methods(models):
        cells = []
        for k in ks:
            truth = RigidTransform([np.radians(5.0 * k)], [5.0 * k, 5.0 * k], center=center)  # fixed -> moving
            moving = dr.warp_image(pd, truth.inverse(), pd.grid)
            result = register(t1, moving, load_preset(preset, overrides), device="cpu", initialise="center")
            err = point_error(result, truth, t1.grid)
            cells.append(f"{err:.2f}" + ("" if err < 1.0 else " (lost)"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def figure(model: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from DeepRegistrationLib.intensity import normalise_unit_range
    from DeepRegistrationLib.methods.translation.inference import translate_image

    t1, pd = png("BrainT1SliceBorder20.png"), png("BrainProtonDensitySliceBorder20.png")
    translated, _ = translate_image(model, pd)
    a, b, c = (normalise_unit_range(pd).data[0], translated.data[0], normalise_unit_range(t1).data[0])
    panels = [(a, "input: PD", "gray"), (b, "translated (NeMAR): T1-like", "gray"), (c, "target: T1", "gray"),
              ((a - c).abs(), f"|PD - T1|, mean {float((a - c).abs().mean()):.3f}", "magma"),
              ((b - c).abs(), f"|translated - T1|, mean {float((b - c).abs().mean()):.3f}", "magma")]
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.6))
    for ax, (img, title, cmap) in zip(axes, panels):
        ax.imshow(img.numpy(), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=[MODEL])
    p.add_argument("--parts", nargs="+", default=["geometry", "known", "capture", "figure"])
    args = p.parse_args()
    torch.set_num_threads(2)
    for part in ("geometry", "known", "capture"):
        if part in args.parts:
            print("\n".join(globals()[part](args.models)) + "\n", flush=True)
    if "figure" in args.parts:
        figure(args.models[0], ROOT / "Docs" / "translation_brainweb.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
