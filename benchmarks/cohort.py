"""Cohort benchmark on this machine: throughput of ``deepreg batch`` (pairs per minute) with 1 and 2 local Dask
workers, the engine's overhead per pair against the registration itself, and a template of the available brains.

Pairs: the three T1 brains of ``../shared/data/brain3d`` (OASIS 0001, 0002 and the voxelmorph subject, 160x192x224,
1 mm), every ordered pair (6) with ``deformable-fast``. For each cluster shape the run starts from an empty output
folder; the cluster's start is timed apart. Overhead per pair = (wall time of the pairs - the workers' own task
time / workers) / pairs, i.e. what the engine adds to reading, registering and writing (scheduling, transfers,
the driver's manifest and report).

Template: ``build_template`` of the three brains, ``deformable-fast``, 3 iterations; a figure of the middle slices
of the initial mean and of the final template (``Docs/cohort_template.png``).

Run:  .venv/bin/python benchmarks/cohort.py [--shapes 1x2 2x1] [--no-template] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brain3d"


def _brains(data: Path, tmp: Path) -> list[Path]:
    from brain_data import oasis, write_voxelmorph_subject

    return [oasis("0001", data)[0], oasis("0002", data)[0], write_voxelmorph_subject(tmp, data)[0]]


def throughput(brains: list[Path], workers: int, threads: int, out: Path) -> dict:
    from DeepRegistrationLib.cohort import PairSpec, run_batch
    from DeepRegistrationLib.cohort.engine import close_client, local_cluster_spec, open_client

    pairs = [PairSpec(id=f"{m.name.split('.')[0]}_to_{f.name.split('.')[0]}", fixed=str(f), moving=str(m),
                      preset="deformable-fast") for f in brains for m in brains if f != m]
    spec = local_cluster_spec(workers, threads)
    t0 = time.perf_counter()
    client = open_client(None, spec)
    client.run(lambda: __import__("DeepRegistrationLib.registration.pipeline"))  # the workers' imports
    start_s = time.perf_counter() - t0
    try:
        summary = run_batch(pairs, out, client=client, cluster=spec, device="cpu", progress=lambda s: None)
    finally:
        close_client(client)
    records = json.loads((out / "manifest.json").read_text())["pairs"]
    task_s = [records[p.id]["figures"]["task_s"] for p in pairs]
    reg_s = [records[p.id]["figures"]["registration_s"] for p in pairs]
    overhead = (summary.wall_s - sum(task_s) / workers) / len(pairs)
    return {"workers": workers, "threads": threads, "pairs": len(pairs), "done": summary.done,
            "cluster_start_s": start_s, "wall_s": summary.wall_s, "pairs_per_minute": 60 * len(pairs) / summary.wall_s,
            "mean_task_s": sum(task_s) / len(task_s), "mean_registration_s": sum(reg_s) / len(reg_s),
            "overhead_per_pair_s": overhead, "overhead_percent": 100 * overhead / (sum(task_s) / len(task_s))}


def template(brains: list[Path], work: Path, figure: Path | None) -> dict:
    from DeepRegistrationLib.cohort import build_template
    from DeepRegistrationLib.cohort.engine import local_cluster_spec

    t0 = time.perf_counter()
    result = build_template(brains, work / "template.nii.gz", iterations=3, cluster=local_cluster_spec(1, 2),
                            device="cpu", progress=lambda s: print(s, file=sys.stderr) if "iteration" in s else None)
    result["wall_s"] = time.perf_counter() - t0
    if figure is not None:
        _figure(work / "template.work" / "template_0.nii.gz", work / "template.nii.gz", brains, figure)
    return result


def _figure(initial: Path, final: Path, brains: list[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import DeepRegistrationLib as dr

    panels = [(f"brain {i + 1}", dr.read_image(b).numpy()) for i, b in enumerate(brains)]
    panels += [("initial mean", dr.read_image(initial).numpy()), ("template, 3 iterations", dr.read_image(final).numpy())]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (title, vol) in zip(axes, panels):
        ax.imshow(vol[:, vol.shape[1] // 2, :], cmap="gray", origin="lower")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def scaling_figure(rows: list[dict], path: Path) -> None:
    """Bar chart of pairs per minute for each cluster shape (with the engine's overhead per pair written on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['workers']} worker(s)\nx {r['threads']} thread(s)" for r in rows]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.2))
    bars = ax.bar(labels, [r["pairs_per_minute"] for r in rows], color="#4a7ab7")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{r['pairs_per_minute']:.2f}\n"
                f"overhead {r['overhead_percent']:.1f} %", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("pairs per minute")
    ax.set_title(f"deepreg batch, {rows[0]['pairs']} 3D brain pairs, deformable-fast", fontsize=9)
    ax.set_ylim(0, max(r["pairs_per_minute"] for r in rows) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--shapes", nargs="+", default=["1x2", "2x1"], help="WORKERSxTHREADS local clusters")
    parser.add_argument("--no-template", action="store_true")
    parser.add_argument("--figure", default=str(ROOT / "Docs" / "cohort_template.png"))
    parser.add_argument("--scaling-figure", default=str(ROOT / "Docs" / "cohort_scaling.png"))
    parser.add_argument("--json")
    args = parser.parse_args()
    from DeepRegistrationLib.runtime import retain_freed_memory

    retain_freed_memory()
    results: dict = {"throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        brains = _brains(Path(args.data), tmp)
        for shape in args.shapes:
            workers, threads = (int(v) for v in shape.split("x"))
            out = tmp / f"batch_{shape}"
            row = throughput(brains, workers, threads, out)
            results["throughput"].append(row)
            print(f"{shape}: {row['pairs_per_minute']:.2f} pairs/min, overhead {row['overhead_per_pair_s']:.2f} s "
                  f"per pair ({row['overhead_percent']:.1f} %)", file=sys.stderr, flush=True)
            shutil.rmtree(out)
        if not args.no_template:
            results["template"] = template(brains, tmp, Path(args.figure) if args.figure else None)
    if args.scaling_figure and results["throughput"]:
        scaling_figure(results["throughput"], Path(args.scaling_figure))
    print("| local cluster | pairs | wall s | pairs / minute | mean registration s | cluster start s | engine overhead "
          "per pair |")
    print("|---|---|---|---|---|---|---|")
    for r in results["throughput"]:
        print(f"| {r['workers']} worker(s) x {r['threads']} thread(s) | {r['done']}/{r['pairs']} | {r['wall_s']:.1f} | "
              f"{r['pairs_per_minute']:.2f} | {r['mean_registration_s']:.1f} | {r['cluster_start_s']:.1f} | "
              f"{r['overhead_per_pair_s']:.2f} s ({r['overhead_percent']:.1f} %) |")
    if "template" in results:
        print("\n| template iteration | registered | largest mean displacement mm | RMS change |")
        print("|---|---|---|---|")
        for it in results["template"]["iterations"]:
            print(f"| {it['iteration']} | {it['registered']} | {it['max_mean_displacement_mm']:.2f} | "
                  f"{it['rms_change']:.4f} |")
        print(f"template wall time {results['template']['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
