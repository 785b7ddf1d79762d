"""``deepreg``: the command line of DeepRegistrationLib.

Subcommands: ``register`` (iterative registration with a preset), ``presets`` (list them),
``apply`` (warp an image and/or points), ``evaluate`` (Dice, HD95, ASSD, TRE, Jacobian),
``info`` (geometry of an image, kind and parameters of a transform), ``demo`` (the quick-start job),
``train voxelmorph`` (train or fine-tune a registration network).
Exit status 0 on success; on a user error one line ``deepreg: error: ...`` and status 2; nothing
is written unless the whole command succeeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import DeepRegError, InputError

__all__ = ["main", "run", "build_parser"]


# ---------------------------------------------------------------------- helpers
def _suffixes(kind: str, interpolation: str = "linear", linear_transform: bool = True) -> set[str]:
    """File suffixes an output of ``kind`` may have (``image``: a warped float image cannot go to PNG/JPEG/BMP)."""
    from ..io.formats import (DENSE_TRANSFORM_SUFFIXES, FIELD_IMAGE_SUFFIXES, IMAGE_SUFFIXES, TRANSFORM_SUFFIXES,
                              TWO_D_ONLY_SUFFIXES)

    if kind == "image":
        return set(IMAGE_SUFFIXES) - (set(TWO_D_ONLY_SUFFIXES) if interpolation == "linear" else set())
    if kind == "transform":
        return (set(TRANSFORM_SUFFIXES) if linear_transform else set(DENSE_TRANSFORM_SUFFIXES)) | \
            set(FIELD_IMAGE_SUFFIXES)
    return {"points": {".csv"}, "json": {".json"}}[kind]


def _check_outputs(outputs, inputs) -> None:
    """:func:`..io.atomic.check_output_paths`, imported when a command runs (importing ``io`` loads torch;
    ``deepreg --help`` should not)."""
    from ..io.atomic import check_output_paths

    check_output_paths(outputs, inputs)


def _read_transform_for(path: str, reference_grid, inverse: bool):
    from ..io import read_transform

    transform = read_transform(path, reference=reference_grid)
    if inverse:
        try:
            transform = transform.inverse()
        except InputError as err:
            raise InputError(f"{path}: --inverse: {err}") from None
        residual = getattr(transform, "inverse_residual_mm", None)
        if residual:
            print(f"numerical inverse: residual max {residual['max']:.4f} mm, p95 {residual['p95']:.4f} mm", file=sys.stderr)
    return transform


def _check_output_dim(path: str | None, image_dim: int) -> None:
    """PNG/JPEG/BMP hold 2D images: refuse a 3D output there before any work."""
    from ..io.atomic import full_suffix
    from ..io.images import TWO_D_ONLY_SUFFIXES

    if path and image_dim != 2 and full_suffix(path) in TWO_D_ONLY_SUFFIXES:
        raise InputError(f"{path}: {full_suffix(path)} files hold 2D images; the output is {image_dim}D")


# ---------------------------------------------------------------------- apply
def _cmd_apply(args: argparse.Namespace) -> int:
    from ..io import read_image, read_points, write_image, write_points
    from ..warp import warp_image

    image_args = [args.moving, args.reference, args.output]
    if any(image_args) and not all(image_args):
        raise InputError("warping an image needs --moving, --reference and --output together")
    if bool(args.points_in) != bool(args.points_out):
        raise InputError("mapping points needs --points-in and --points-out together")
    if not any(image_args) and not args.points_in:
        raise InputError("nothing to do: give --moving/--reference/--output and/or --points-in/--points-out")
    _check_outputs([(args.output, _suffixes("image", args.interpolation)), (args.points_out, _suffixes("points"))],
                   (args.moving, args.reference, args.transform, args.points_in))

    reference = read_image(args.reference) if args.reference else None
    if reference is not None:
        _check_output_dim(args.output, reference.dim)
    transform = _read_transform_for(args.transform, reference.grid if reference else None, args.inverse)
    warped = points = None
    if reference is not None:
        moving = read_image(args.moving)
        if args.interpolation != "linear":
            moving = moving.as_label_map() if args.interpolation == "label" else moving
        for img in (moving, reference):
            if img.dim != transform.dim:
                raise InputError(f"{img.name} is {img.dim}D but {args.transform} is a {transform.dim}D transform")
        warped = warp_image(moving, transform, reference, args.interpolation, args.default_value)
    if args.points_in:
        pts = read_points(args.points_in, dim=transform.dim)
        points = transform.map_points(pts)
    from ..io.atomic import output_transaction

    with output_transaction():  # both outputs or neither
        if warped is not None:
            write_image(warped, args.output)
        if points is not None:
            write_points(points, args.points_out)
    if warped is not None:
        print(f"wrote {args.output}")
    if points is not None:
        print(f"wrote {args.points_out} ({len(points)} points)")
    return 0


# ---------------------------------------------------------------------- evaluate
def _print_report(report: dict) -> None:
    if "labels" in report:
        has_sd = "hd95" in next(iter(report["labels"].values()))
        header = f"{'label':>7} {'Dice':>7} {'Jaccard':>8}" + (f" {'HD95 mm':>8} {'ASSD mm':>8}" if has_sd else "")
        print(header)
        for label, v in report["labels"].items():
            line = f"{label:>7} {v['dice']:7.3f} {v['jaccard']:8.3f}"
            if has_sd:
                line += f" {v['hd95']:8.2f} {v['assd']:8.2f}"
            print(line)
        m = report["mean"]
        line = f"{'mean':>7} {m['dice']:7.3f} {m['jaccard']:8.3f}"
        if has_sd:
            line += f" {m['hd95']:8.2f} {m['assd']:8.2f}"
        print(line)
        print(f"mean Dice before (identity): {report['mean_dice_before']:.3f}")
    if "fire" in report:
        f = report["fire"]
        print(f"FIRE control points ({f['points']}): mean error {f['mean_error']:.2f} px, median "
              f"{f['median_error']:.2f}, max {f['max_error']:.2f} (a pair above 25 px is a failure)")
    if "tre_mm" in report:
        t = report["tre_mm"]
        print(f"TRE ({t['count']} landmarks): mean {t['mean']:.2f} mm, median {t['median']:.2f}, "
              f"p95 {t['p95']:.2f}, max {t['max']:.2f}")
    if "jacobian" in report:
        j = report["jacobian"]
        print(f"Jacobian: folded voxels {j['folding_percent']:.3f} %, std log|J| {j['std_log_jacobian']:.4f}, "
              f"det range {j['min']:.3f}..{j['max']:.3f}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..io import read_image, read_points
    from ..io.atomic import atomic_output

    if bool(args.fixed_labels) != bool(args.moving_labels):
        raise InputError("label evaluation needs --fixed-labels and --moving-labels together")
    if bool(args.fixed_landmarks) != bool(args.moving_landmarks):
        raise InputError("landmark evaluation needs --fixed-landmarks and --moving-landmarks together")
    if not args.fixed_labels and not args.fixed_landmarks and not args.fire_points:
        raise InputError("nothing to evaluate: give label maps, landmarks and/or FIRE control points")
    _check_outputs([(args.json, _suffixes("json"))], (args.transform, args.fixed_labels, args.moving_labels,
                                                       args.fixed_landmarks, args.moving_landmarks, args.reference,
                                                       args.fire_points, args.moving_reference))
    fixed_labels = moving_labels = reference = None
    if args.fixed_labels:
        fixed_labels = read_image(args.fixed_labels).as_label_map()
        moving_labels = read_image(args.moving_labels).as_label_map()
        for img in (fixed_labels, moving_labels):
            img.check_not_empty_labels()
        if fixed_labels.dim != moving_labels.dim:
            raise InputError(f"{args.fixed_labels} is {fixed_labels.dim}D but {args.moving_labels} is {moving_labels.dim}D")
    if args.reference:
        reference = read_image(args.reference)
    grid = fixed_labels.grid if fixed_labels is not None else (reference.grid if reference is not None else None)
    transform = _read_transform_for(args.transform, grid, False)
    if fixed_labels is not None and fixed_labels.dim != transform.dim:
        raise InputError(f"{args.fixed_labels} is {fixed_labels.dim}D but {args.transform} is {transform.dim}D")
    fixed_points = moving_points = None
    if args.fixed_landmarks:
        fixed_points = read_points(args.fixed_landmarks, reference=grid)
        moving_points = read_points(args.moving_landmarks,
                                    reference=moving_labels.grid if moving_labels is not None else grid)
    from ..metrics.report import evaluate_transform

    report = {}
    if fixed_labels is not None or fixed_points is not None or reference is not None:
        report = evaluate_transform(transform, fixed_labels, moving_labels, fixed_points, moving_points, reference,
                                    args.interpolation, surface=not args.no_surface)
    if args.fire_points:
        import numpy as np

        from ..metrics.fire import pair_error, read_fire_points

        moving_grid = read_image(args.moving_reference).grid if args.moving_reference else None
        fire = read_fire_points(args.fire_points, grid, moving_grid)
        errors = np.linalg.norm(np.asarray(transform.map_points(fire.fixed)) - fire.moving, axis=1)
        report["fire"] = {"points": int(len(errors)), "mean_error": pair_error(transform, fire),
                          "median_error": float(np.median(errors)), "max_error": float(errors.max())}
    _print_report(report)
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------- info
def _cmd_info(args: argparse.Namespace) -> int:
    from ..io.atomic import full_suffix
    from ..io.formats import TRANSFORM_SUFFIXES
    from ..io.images import describe_image_file

    path = Path(args.file)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_file() and full_suffix(path) in TRANSFORM_SUFFIXES:
        from ..io.transforms import read_transform

        info = {"file": str(path), **read_transform(path).describe()}
    else:
        described = describe_image_file(path)  # image files: SimpleITK alone (no torch: about 0.3 s)
        if described is None:  # DICOM folders and MGH/MGZ: the full reader
            from ..io import read_image

            image = read_image(path, allow_nonfinite=True)
            data = image.data
            described = {"kind": "image", **image.grid.describe(), "channels": image.num_channels,
                         "dtype": str(data.dtype).replace("torch.", ""),
                         "range": [float(data.min()), float(data.max())] if data.numel() else None}
        info = {"file": str(path), **described}
        if info["channels"] == info["dimension"] and info["dtype"].startswith("float"):
            info["note"] = f"{info['dimension']} components per voxel: usable as a displacement field (LPS mm)"
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0


def _format_info(info: dict, indent: int = 0) -> str:
    lines = []
    pad = "  " * indent
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(_format_info(value, indent + 1))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key}:")
            for i, item in enumerate(value):
                lines.append(f"{pad}  [{i}]")
                lines.append(_format_info(item, indent + 2))
        else:
            if isinstance(value, float):
                value = round(value, 6)
            elif isinstance(value, list):
                value = json.dumps(value if not value or not isinstance(value[0], list)
                                   else [[round(x, 6) for x in row] for row in value])
            lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- register
class _Progress:
    """Text progress bar on stderr, or one JSON object per line on stdout (``--progress json``)."""

    def __init__(self, mode: str, config) -> None:
        self.mode = mode
        self.offsets: dict[tuple[int, int], int] = {}  # steps before each (stage, level)
        total = 0
        for si, stage in enumerate(config.stages):
            for li, steps in enumerate(stage.iterations_per_level()):
                self.offsets[(si, li)] = total
                total += steps
        self.total = total or 1
        self.done = 0
        self.last = 0.0
        self.stages = len(config.stages)

    def __call__(self, event: dict) -> None:
        import time

        # events may skip steps (a GPU run reports every few): count from the event's position
        self.done = self.offsets.get((event["stage"], event["level"]), self.done) + event["iteration"] + 1
        fraction = min(1.0, self.done / self.total)
        if self.mode == "json":
            print(json.dumps({"event": "progress", "fraction": round(fraction, 4), **event}), flush=True)
            return
        now = time.monotonic()
        if now - self.last < 0.2 and self.done < self.total:
            return
        self.last = now
        bar = "#" * int(30 * fraction)
        print(f"\r[{bar:<30}] {fraction * 100:5.1f}%  stage {event['stage'] + 1}/{self.stages} {event['model']:<11}"
              f" level {event['level'] + 1}  " + (f"loss {event['loss']:+.4f}" if event["loss"] is not None
                                                  else "network forward pass"), end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.mode == "text":
            print(file=sys.stderr)


def _warped_output(result, moving_colour, interpolation: str, path: str):
    """The moving image warped onto the fixed grid: in colour when it was read as RGB(A) (the registration used
    one channel), and for a PNG/JPEG/BMP output rounded and clipped to the moving image's own integer type (a
    photograph stays a photograph); a float moving image cannot go to such a file (the writer says why)."""
    from ..io.atomic import full_suffix
    from ..io.formats import TWO_D_ONLY_SUFFIXES
    from ..warp import warp_image, warp_in_own_type

    source = moving_colour if moving_colour is not None else result.moving
    to_picture = full_suffix(path) in TWO_D_ONLY_SUFFIXES and not source.data.is_floating_point()
    if moving_colour is None and not to_picture:
        return result.warped(interpolation)
    if to_picture:
        return warp_in_own_type(source, result.transform, result.fixed_grid, interpolation, upper=65535)
    return warp_image(source.float() if interpolation == "linear" else source, result.transform, result.fixed_grid,
                      interpolation)


def _cmd_register(args: argparse.Namespace) -> int:
    import signal
    import warnings

    from ..io import read_transform, write_transform
    from ..io.atomic import output_transaction
    from ..registration import RegistrationCancelled, load_preset, register
    from ..registration.inputs import read_pair_inputs

    outputs = [p for p in (args.out_transform, args.out_image, args.out_jacobian, args.out_inverse) if p]
    inputs = [p for p in (args.fixed, args.moving, args.fixed_mask, args.moving_mask, args.initial_transform,
                          args.fixed_landmarks, args.moving_landmarks) if p]
    if bool(args.fixed_landmarks) != bool(args.moving_landmarks):
        raise InputError("landmarks need --fixed-landmarks and --moving-landmarks together")
    config = load_preset(args.preset, args.set or [])
    transform_suffixes = _suffixes("transform", linear_transform=config.is_linear)
    from ..io.atomic import full_suffix

    if args.out_transform and full_suffix(args.out_transform) not in transform_suffixes \
            and full_suffix(args.out_transform) in _suffixes("transform"):
        raise InputError(f"{args.out_transform}: the preset {config.name or args.preset!r} gives a deformable "
                         f"transform, which {full_suffix(args.out_transform)} files cannot hold; write .h5")
    # a photograph's warped image may go to PNG/JPEG: written in the moving image's integer type (_warped_output)
    _check_outputs([(args.out_transform, transform_suffixes), (args.out_image, _suffixes("image", "nearest")),
                    (args.out_jacobian, _suffixes("image")), (args.out_inverse, transform_suffixes)], inputs)
    pair = read_pair_inputs(args.fixed, args.moving, args.fixed_mask, args.moving_mask, args.fixed_landmarks,
                            args.moving_landmarks, channel=config.channel)
    for note in pair.notes:
        print(f"note: {note}", file=sys.stderr)
    fixed, moving = pair.fixed, pair.moving
    for path in (args.out_image, args.out_jacobian):
        _check_output_dim(path, fixed.dim)
    if args.out_image and args.interpolation == "linear":  # a warped float image cannot go to PNG/JPEG/BMP
        from ..io.atomic import full_suffix
        from ..io.formats import TWO_D_ONLY_SUFFIXES

        source = pair.moving_colour if pair.moving_colour is not None else moving
        if full_suffix(args.out_image) in TWO_D_ONLY_SUFFIXES and source.data.is_floating_point():
            raise InputError(f"{args.out_image}: unsupported file type '{full_suffix(args.out_image)}' for a "
                             "floating-point moving image (PNG/JPEG/BMP hold 8/16-bit integers; a photograph's "
                             "warped image goes there in its own type); write .nii.gz, .nrrd, .mha or .tif")
    fixed_mask, moving_mask = pair.fixed_mask, pair.moving_mask
    fixed_points, moving_points = pair.fixed_points, pair.moving_points
    initial = read_transform(args.initial_transform) if args.initial_transform else None
    initialise = "landmarks" if fixed_points is not None and initial is None else None

    cancelled = {"flag": False}

    def on_signal(signum, frame):  # Cancel from the Slicer panel: stop at the next step, write nothing
        cancelled["flag"] = True

    def cancel_requested() -> bool:
        if args.cancel_file and not cancelled["flag"] and os.path.exists(args.cancel_file):
            cancelled["flag"] = True
        return cancelled["flag"]

    signal.signal(signal.SIGTERM, on_signal)
    progress = _Progress(args.progress, config)
    try:
        with warnings.catch_warnings():  # printed below from the figures, once and without a source line
            warnings.simplefilter("ignore", UserWarning)
            result = register(fixed, moving, config, fixed_mask=fixed_mask, moving_mask=moving_mask,
                              fixed_points=fixed_points, moving_points=moving_points, initial_transform=initial,
                              device=args.device, progress=progress, cancel=cancel_requested,
                              initialise=initialise)
    except (RegistrationCancelled, KeyboardInterrupt):
        progress.finish()
        print("deepreg: cancelled; nothing written", file=sys.stderr)
        return 130
    progress.finish()
    for note in result.figures.get("warnings", []):
        print(f"deepreg: warning: {note}", file=sys.stderr)
    det, grid, _ = result.jacobian()  # on the fixed grid: the figure 'deepreg evaluate' gives
    figures = result.figures
    warped = _warped_output(result, pair.moving_colour, args.interpolation, args.out_image) if args.out_image else None
    inverse = result.inverse() if args.out_inverse else None  # figures["inverse"]: exact or not, consistency
    with output_transaction():  # all outputs or none
        write_transform(result.transform, args.out_transform)
        if inverse is not None:
            write_transform(inverse, args.out_inverse)
        if warped is not None:
            warped.write(args.out_image)
        if args.out_jacobian:
            from ..image import Image

            Image(det.float()[None], grid, name="jacobian").write(args.out_jacobian)
    summary = {"event": "done", "preset": config.name or args.preset, "outputs": outputs, "figures": figures}
    if args.progress == "json":
        print(json.dumps(summary), flush=True)
    else:
        print(f"registered in {figures['time_s']:.1f} s on {figures['device']}; folded voxels "
              f"{figures['jacobian_folding_percent']:.3f} %; wrote {', '.join(outputs)}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from ..registration import list_presets
    from ..registration.presets import presets_dir

    presets = list_presets()
    if not presets:
        raise InputError("no preset found (looked in: " + ", ".join(str(p) for p in presets_dir()) + "); the "
                         "installation is incomplete: reinstall the package, or set DEEPREG_PRESETS to a folder of "
                         "preset .json files")
    if args.json:
        print(json.dumps(presets, indent=2))
    else:
        width = max(map(len, presets), default=0)
        for name, description in presets.items():
            print(f"{name:<{width}}  {description}")
    return 0


# ---------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), cache_dir=Path(args.cache_dir) if args.cache_dir else None,
             data_dir=Path(args.data_dir) if args.data_dir else None)
    return 0


# ---------------------------------------------------------------------- translate
def _cmd_translate(args: argparse.Namespace) -> int:
    from ..io import read_image, write_image
    from ..methods.translation.inference import load_translator, translate_image
    from ..devices import resolve_device

    _check_outputs([(args.output, _suffixes("image"))], (args.input,))
    device = resolve_device(args.device)
    _, card = load_translator(args.model, device)  # a wrong or corrupt model is refused before reading the image
    image = read_image(args.input, dim=2 if card["input"]["dim"] == 2 else None)
    if image.num_channels > 1:
        print(f"note: {args.input} has {image.num_channels} channels; translating its luminance")
        image = image.to_grayscale()
    translated, figures = translate_image(args.model, image, device)
    write_image(translated, args.output)
    resampled = ", resampled to the model spacing" if figures["resampled"] else ""
    print(f"wrote {args.output} ({figures['source_modality']} -> {figures['target_modality']}-like by "
          f"{figures['translator']}, {figures['translate_s']:.2f} s{resampled})")
    return 0


# ---------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run

    return run(args)


def _cmd_train_vessels(args: argparse.Namespace) -> int:
    from .train_vessels import run

    return run(args)


def _cmd_train_correlation(args: argparse.Namespace) -> int:
    from .train_correlation import run

    return run(args)


def _cmd_train_refinement(args: argparse.Namespace) -> int:
    from .train_refinement import run

    return run(args)


def _cmd_train_keypoints(args: argparse.Namespace) -> int:
    from .train_keypoints import run

    return run(args)


def _cmd_train_translation(args: argparse.Namespace) -> int:
    from .train_translation import run

    return run(args)


def _cmd_train_metric(args: argparse.Namespace) -> int:
    from .train_metric import run

    return run(args)


# ---------------------------------------------------------------------- cohorts
def _cmd_batch(args: argparse.Namespace) -> int:
    from .cohort import run_batch_command

    return run_batch_command(args)


def _cmd_template(args: argparse.Namespace) -> int:
    from .cohort import run_template_command

    return run_template_command(args)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="deepreg",
        description="Medical image registration in physical space (LPS mm). Transforms are resampling transforms "
                    "fixed -> moving (ITK convention; Slicer 'from parent').")
    parser.add_argument("--version", action="version", version=f"deepreg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("register", help="register a moving image onto a fixed image with a preset",
                       description="Iterative registration (rigid -> affine -> diffeomorphic, as the preset says). "
                                   "Writes the resampling transform fixed -> moving (ITK .h5, readable by SimpleITK "
                                   "and Slicer) and optionally the warped moving image.")
    p.add_argument("--fixed", required=True, help="fixed (reference) image")
    p.add_argument("--moving", required=True, help="moving image")
    p.add_argument("--preset", default="deformable-fast", help="preset name (see 'deepreg presets') or a .json file")
    p.add_argument("--out-transform", required=True, help="transform file to write (.h5; .tfm for linear presets)")
    p.add_argument("--out-image", help="warped moving image to write (on the fixed grid)")
    p.add_argument("--out-jacobian", help="Jacobian determinant of the transform on the fixed grid to write")
    p.add_argument("--out-inverse", help="inverse transform (moving -> fixed) to write: exact for linear and velocity-"
                                          "field results, numerical for plain displacement fields (.h5)")
    p.add_argument("--interpolation", choices=["linear", "nearest", "label"], default="linear",
                   help="interpolation of --out-image (label: per-label linear weights, for label maps)")
    p.add_argument("--fixed-mask", help="label map: measure similarity only where it is non-zero")
    p.add_argument("--moving-mask", help="label map on the moving image, likewise")
    p.add_argument("--fixed-landmarks", help="landmarks in fixed space (initialise by a rigid fit)")
    p.add_argument("--moving-landmarks", help="corresponding landmarks in moving space")
    p.add_argument("--initial-transform", help="linear transform (fixed -> moving) to start from")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset field: FIELD, stages.N.FIELD, svf.FIELD, linear.FIELD or voxelmorph.FIELD "
                        "(e.g. voxelmorph.network=MODEL_DIR; repeatable)")
    p.add_argument("--progress", choices=["text", "json"], default="text",
                   help="progress bar on stderr (text) or JSON lines on stdout (json)")
    p.add_argument("--cancel-file", help="stop at the next step, writing nothing, once this file exists (how the "
                                         "Slicer panel cancels on every platform)")
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("presets", help="list the registration presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("apply", help="warp an image and/or map points through a transform",
                       description="Warp the moving image onto the reference grid (moving(T(x))) and/or map "
                                   "fixed-space points (CSV, LPS mm) to moving space.")
    p.add_argument("--transform", required=True, help="ITK transform (.h5/.tfm/.txt/.mat) or displacement field image")
    p.add_argument("--inverse", action="store_true", help="use the inverse transform (numerical for dense fields)")
    p.add_argument("--moving", help="image to warp")
    p.add_argument("--reference", help="image whose grid the output takes (the fixed image)")
    p.add_argument("--output", help="warped image to write")
    p.add_argument("--interpolation", choices=["linear", "nearest", "label"], default="linear",
                   help="'label' = label-aware interpolation for label maps (default: linear)")
    p.add_argument("--default-value", type=float, default=0.0, help="value outside the moving image")
    p.add_argument("--points-in", help="CSV/elastix/markups points in fixed space (LPS mm)")
    p.add_argument("--points-out", help="CSV of the mapped points (moving space, LPS mm)")
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("evaluate", help="Dice/Jaccard, HD95, ASSD, TRE and Jacobian figures of a transform",
                       description="Warp the moving labels through the transform onto the fixed labels' grid and "
                                   "compare; map fixed landmarks and compare with the moving ones.")
    p.add_argument("--transform", required=True)
    p.add_argument("--fixed-labels", help="label map on the fixed grid")
    p.add_argument("--moving-labels", help="label map on the moving grid")
    p.add_argument("--fixed-landmarks", help="landmarks in fixed space (.csv LPS mm, elastix .txt, .fcsv, .mrk.json)")
    p.add_argument("--moving-landmarks", help="corresponding landmarks in moving space")
    p.add_argument("--reference", help="image giving the grid for the Jacobian when no label maps are given")
    p.add_argument("--interpolation", choices=["label", "nearest"], default="label",
                   help="how the moving labels are warped (default: label-aware)")
    p.add_argument("--no-surface", action="store_true", help="skip HD95/ASSD (faster)")
    p.add_argument("--fire-points", help="FIRE control points (lines 'x_fixed y_fixed x_moving y_moving', pixels; "
                                         "--reference and --moving-reference convert them when the images' pixels "
                                         "are not millimetres)")
    p.add_argument("--moving-reference", help="the moving image (its grid converts the moving FIRE points)")
    p.add_argument("--json", help="also write the full report as JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("translate", help="translate an image into another modality with a translation model",
                       description="Run a translation model (deepreg train translation) on an image: the output is "
                                   "on the input's grid, intensities in [0, 1], anatomy unmoved.")
    p.add_argument("--model", required=True, help="translation model name or folder")
    p.add_argument("--input", required=True, help="image of the model's source modality")
    p.add_argument("--output", required=True, help="translated image to write (NIfTI, NRRD, MHA...: float values)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_cmd_translate)

    p = sub.add_parser("train", help="train a network (deepreg train voxelmorph|supervised|metric|translation|"
                                     "vessels|correlation|refinement|keypoints --help)")
    train_sub = p.add_subparsers(dest="network", required=True, metavar="NETWORK")
    t = train_sub.add_parser("voxelmorph", help="unsupervised VoxelMorph (LNCC + diffusion, optional Dice, "
                             "augmentation and SynthMorph-style synthesis)",
                             description="Train (or fine-tune with --init) a VoxelMorph model on a folder, list or "
                                         "CSV of images, optionally with label maps; writes a model folder usable "
                                         "by the voxelmorph presets (set 'network' to its path).")
    from .train import add_arguments

    add_arguments(t)
    t.set_defaults(func=_cmd_train)
    t = train_sub.add_parser("supervised", help="supervised registration network: CNN regression of known "
                             "displacements (synthetic deformations and teacher registrations)",
                             description="Train the VoxelMorph network by regression of known displacements only: "
                                         "random deformations of each image (--known-pairs) and teacher pairs "
                                         "(--teacher MOVING FIXED TRANSFORM, e.g. from 'deepreg register --preset "
                                         "deformable-accurate'); writes a model folder usable by the voxelmorph "
                                         "stage (--set voxelmorph.network=MODEL_DIR with a voxelmorph preset).")
    from .train import add_supervised_arguments

    add_supervised_arguments(t)
    t.set_defaults(func=_cmd_train)
    t = train_sub.add_parser("metric", help="a learned similarity metric (similarity: learned:<model>)",
                             description="Train a learned similarity metric on images of any modality (random "
                                         "intensity mappings make the second modality); writes a model folder.")
    from .train_metric import add_arguments as metric_arguments

    metric_arguments(t)
    t.set_defaults(func=_cmd_train_metric)
    t = train_sub.add_parser("vessels", help="the retinal vessel U-Net, on pseudo-labels (vessel_model in the "
                                              "retinal presets)",
                             description="Train the vessel U-Net on fundus photographs and angiograms: labels are "
                                         "each image's own Frangi vessel map; random inversion makes it polarity-free.")
    from .train_vessels import add_arguments as vessel_arguments

    vessel_arguments(t)
    t.set_defaults(func=_cmd_train_vessels)
    t = train_sub.add_parser("correlation", help="the retinal correlation network (stage correlation, preset "
                                                  "retina-learned)",
                             description="Train the correlation network on synthetic homographies of real vessel "
                                         "maps: features whose 4D correlation volume holds the true matches.")
    from .train_correlation import add_arguments as correlation_arguments

    correlation_arguments(t)
    t.set_defaults(func=_cmd_train_correlation)
    t = train_sub.add_parser("refinement", help="the retinal dense refinement network (stage dense_refinement, "
                                                 "preset retina-learned)",
                             description="Train the dense refinement network on synthetic residual displacements of "
                                         "real vessel maps: the flow left after a global model.")
    from .train_refinement import add_arguments as refinement_arguments

    refinement_arguments(t)
    t.set_defaults(func=_cmd_train_refinement)
    t = train_sub.add_parser("keypoints", help="the retinal keypoint network (keypoint stage detector: learned)",
                             description="Train the SuperPoint-style keypoint network on fundus photographs, "
                                         "self-supervised: homographic adaptation gives the keypoints, synthetic "
                                         "homographies the correspondences.")
    from .train_keypoints import add_arguments as keypoint_arguments

    keypoint_arguments(t)
    t.set_defaults(func=_cmd_train_keypoints)
    t = train_sub.add_parser("translation", help="a modality translator (stage translate): NeMAR or CycleGAN",
                             description="Train a source -> target modality translation network: NeMAR (jointly "
                                         "with a registration network, so it cannot move anatomy) or CycleGAN "
                                         "(unpaired); writes a model folder.")
    from .train_translation import add_arguments as translation_arguments

    translation_arguments(t)
    t.set_defaults(func=_cmd_train_translation)

    from .cohort import add_batch_arguments, add_template_arguments

    p = sub.add_parser("batch", help="register many pairs on Dask (local cluster or --scheduler), resumably",
                       description="One registration per pair on Dask distributed workers; outputs per pair in "
                                   "OUT/pairs/<id>/ (transform, warped image, thumbnail, figures), a manifest that "
                                   "makes a rerun skip finished pairs and retry failed ones, and a report "
                                   "(summary.csv, report.md). Exit status 4 when some pair failed.")
    add_batch_arguments(p)
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("template", help="unbiased group-wise template of a set of images (iterated on Dask)",
                       description="Register all images onto the current template, average the warped images, move "
                                   "the average by the inverse of the mean transform; repeat (resumable).")
    add_template_arguments(p)
    p.set_defaults(func=_cmd_template)

    p = sub.add_parser("info", help="geometry of an image, or kind and parameters of a transform file")
    p.add_argument("file", help="image file, DICOM folder or transform file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="the quick-start job: known-transform recovery on the ICBM152 template",
                       description="Fetches the ICBM152 2009a template (nilearn wheel) and a real nonlinear warp "
                                   "(nitransforms wheel) from PyPI, builds a known transform, registers and reports.")
    p.add_argument("--output", default="demo_output", help="folder for the results (default: demo_output)")
    p.add_argument("--cache-dir", help="where the downloaded wheels are kept (default: ~/.cache/deepregistration)")
    p.add_argument("--data-dir", help="use these files instead of downloading (a folder with the template and warp)")
    p.set_defaults(func=_cmd_demo)
    return parser


def run() -> None:
    """The ``deepreg`` program (console script and ``python -m DeepRegistrationLib``): :func:`main` in a
    process whose allocator keeps freed memory (:mod:`.runtime`)."""
    from ..runtime import retain_freed_memory

    retain_freed_memory()
    code = main()
    transforms_io = sys.modules.get("DeepRegistrationLib.io.transforms")  # not imported: no transform was written
    if transforms_io is not None and transforms_io.HDF5_STATE["write_failed"]:  # see HDF5_STATE: skip the exit handlers that would crash on the open file
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded verbatim (e.g. in model cards)
    try:
        return int(args.func(args) or 0)
    except DeepRegError as err:
        if args.debug:
            raise
        print(f"deepreg: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print("deepreg: error: out of memory (try a smaller image or a machine with more RAM)", file=sys.stderr)
        return 3
    except Exception as err:  # noqa: BLE001 - last resort: one line, no traceback unless --debug
        if args.debug:
            raise
        print(f"deepreg: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1
