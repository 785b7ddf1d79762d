"""One pair of a cohort run, as a worker runs it: read the pair's files (in the worker, never shipped through the
scheduler), register them exactly as ``deepreg register`` does (same input checks, same preset, same
initialisation), and write the pair's outputs into ``OUT/pairs/<id>/`` all together or not at all:

* ``transform.h5`` (``transform.tfm`` for a linear preset): the resampling transform fixed -> moving (LPS mm,
  Slicer "from parent");
* ``warped.nii.gz``: the moving image on the fixed grid;
* ``thumbnail.png``: checkerboard of fixed and warped beside the Jacobian map (:mod:`.thumbnails`);
* ``figures.json``: time, device, Jacobian figures, Dice (with label maps) and TRE (with landmarks).

A pair whose inputs are wrong (missing, corrupt, wrong dimension, NaN...) returns ``{"status": "failed", "error":
...}`` instead of raising, so the engine does not retry what cannot succeed; anything else raises and is retried.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import InputError, OutputError

__all__ = ["register_pair", "pair_dir", "attempts", "OUTPUT_NAMES", "ATTEMPTS"]

#: Output files of a pair, relative to the pair's folder (the transform's suffix depends on the preset).
ATTEMPTS = "attempts.log"
OUTPUT_NAMES = {"warped": "warped.nii.gz", "thumbnail": "thumbnail.png", "figures": "figures.json"}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "-"


def attempts(out_dir: str | os.PathLike, pair_id: str) -> int:
    """How many times a worker started the pair (the lines of its ``attempts.log``)."""
    path = pair_dir(out_dir, pair_id) / ATTEMPTS
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


def pair_dir(out_dir: str | os.PathLike, pair_id: str) -> Path:
    return Path(out_dir) / "pairs" / pair_id


def _device(device: str) -> str:
    """``auto`` on a machine with several GPUs: the GPU of this worker (worker ``name`` modulo the GPU count)."""
    import torch

    if device != "auto" or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(str(name).rsplit("-", 1)[-1]) if str(name).rsplit("-", 1)[-1].isdigit() else hash(name)
    except (ImportError, ValueError):
        return device
    return f"cuda:{index % torch.cuda.device_count()}"


def register_pair(spec: dict, out_dir: str, device: str = "auto", threads: int | None = None) -> dict:
    """Register one pair (``spec``: :meth:`PairSpec.to_dict`) and write its outputs; return its record fields:
    ``status`` (``done`` or ``failed``), ``figures``, ``outputs`` (paths relative to ``out_dir``) or ``error``."""
    try:
        return _register_pair(spec, Path(out_dir), device, threads)
    except (InputError, OutputError) as err:
        return {"status": "failed", "error": str(err)}


def _register_pair(spec: dict, out_dir: Path, device: str, threads: int | None) -> dict:
    import torch

    from ..io import read_image, write_transform
    from ..io.atomic import atomic_output, output_transaction
    from ..metrics.report import evaluate_transform
    from ..registration import load_preset, register
    from ..registration.inputs import read_pair_inputs
    from .thumbnails import write_thumbnail

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    folder = pair_dir(out_dir, spec["id"])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ATTEMPTS, "a", encoding="utf-8") as log:  # one line per start: retries after a crash show
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} worker {_worker_name()}\n")
    config = load_preset(spec["preset"])
    pair = read_pair_inputs(spec["fixed"], spec["moving"], spec.get("fixed_mask"), spec.get("moving_mask"),
                            spec.get("fixed_landmarks"), spec.get("moving_landmarks"), channel=config.channel)
    labels = None
    if spec.get("fixed_labels") or spec.get("moving_labels"):
        if not (spec.get("fixed_labels") and spec.get("moving_labels")):
            raise InputError("label maps need fixed_labels and moving_labels together")
        labels = [read_image(spec[k]).as_label_map() for k in ("fixed_labels", "moving_labels")]
        if labels[0].dim != pair.fixed.dim:  # single-slice label maps of 2D images
            from ..io.images import single_slice_as_2d

            labels = [single_slice_as_2d(lab) or lab for lab in labels]
    initialise = "landmarks" if pair.fixed_points is not None else None
    result = register(pair.fixed, pair.moving, config, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
                      fixed_points=pair.fixed_points, moving_points=pair.moving_points, device=_device(device),
                      initialise=initialise)
    registration_s = result.figures["time_s"]
    det, _, stats = result.jacobian()
    warped = result.warped()
    figures = {"registration_s": registration_s, "device": result.figures["device"],
               "threads": torch.get_num_threads(),
               "folding_percent": stats["folding_percent"], "std_log_jacobian": stats["std_log_jacobian"],
               "notes": list(pair.notes)}
    if labels or pair.fixed_points is not None:
        report = evaluate_transform(result.transform, labels[0] if labels else None, labels[1] if labels else None,
                                    pair.fixed_points, pair.moving_points, surface=False)
        if labels:
            figures.update(dice=report["mean"]["dice"], dice_before=report["mean_dice_before"])
        if "tre_mm" in report:
            figures["tre_mm"] = {k: v for k, v in report["tre_mm"].items() if k != "per_point"}
    outputs = {"transform": "transform.tfm" if result.transform.is_linear else "transform.h5", **OUTPUT_NAMES}
    figures["task_s"] = time.perf_counter() - start
    with output_transaction():  # all outputs of the pair or none
        write_transform(result.transform, folder / outputs["transform"])
        warped.write(folder / outputs["warped"])
        with atomic_output(folder / outputs["thumbnail"]) as tmp:
            write_thumbnail(tmp, pair.fixed.numpy(), warped.numpy(), det.numpy())
        with atomic_output(folder / outputs["figures"], verify=False) as tmp:
            tmp.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    rel = {k: str((folder / v).relative_to(out_dir)) for k, v in outputs.items()}
    return {"status": "done", "figures": figures, "outputs": rel}
