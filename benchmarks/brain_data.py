"""The brain MRI data of the benchmarks and of the bundled model's training recipe, as image files.

OASIS 0001 and 0002 are NIfTI already (``../shared/data/brain3d/oasis``). The voxelmorph subject comes as
numpy arrays on the same OASIS crop (1 mm, same orientation); it is written with OASIS 0001's geometry, its
intensities scaled to OASIS 0001's 99th percentile (demons compares raw intensities), and its labels mapped
aseg -> seg35 (seg35 = aseg labels 2, 3, 4, 5, 7, 8, 10-18, 26, 28, 30, 31, 41-44, 46, 47, 49-54, 58, 60, 62,
63 numbered 1..35; the unambiguous ones agree with the largest overlap before registration).

Run:  .venv/bin/python benchmarks/brain_data.py OUT_DIR [DATA_DIR]   (writes vm_norm.nii.gz, vm_seg35.nii.gz)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brain3d"
SEG35_ASEG = [2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 26, 28, 30, 31, 41, 42, 43, 44, 46, 47, 49, 50,
              51, 52, 53, 54, 58, 60, 62, 63]


def oasis(subject: str, data: Path = DEFAULT_DATA) -> tuple[Path, Path]:
    """(image, seg35 labels) of OASIS subject ``"0001"`` or ``"0002"``."""
    folder = data / "oasis"
    return (folder / f"OAS1_{subject}_MR1_aligned_norm.nii.gz", folder / f"OAS1_{subject}_MR1_aligned_seg35.nii.gz")


def write_voxelmorph_subject(out_dir: Path, data: Path = DEFAULT_DATA) -> tuple[Path, Path]:
    """Write the voxelmorph subject as NIfTI (image, seg35 labels) into ``out_dir``; return their paths."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    import DeepRegistrationLib as dr

    ref = dr.read_image(oasis("0001", data)[0])
    arrays = np.load(data / "voxelmorph_subject" / "test_scan.npz")
    vol = arrays["vol"].transpose(2, 1, 0).astype(np.float32)  # (i, j, k) -> array order (k, j, i)
    vol *= float(np.percentile(ref.numpy(), 99)) / float(np.percentile(vol, 99))
    seg = arrays["seg"].transpose(2, 1, 0).astype(np.int32)
    mapped = np.zeros_like(seg)
    for new, aseg in enumerate(SEG35_ASEG, start=1):
        mapped[seg == aseg] = new
    out_dir.mkdir(parents=True, exist_ok=True)
    image, labels = out_dir / "vm_norm.nii.gz", out_dir / "vm_seg35.nii.gz"
    dr.Image(torch.from_numpy(vol)[None], ref.grid, "voxelmorph subject").write(image)
    dr.Image(torch.from_numpy(mapped)[None], ref.grid, "voxelmorph subject seg35").write(labels)
    return image, labels


def remap_contrast(image_path: Path, labels_path: Path, contrast: str, out: Path) -> Path:
    """Write ``image_path`` rendered in another contrast (``fresh_data.CONTRAST_CURVES``: "pd" or "t2", a
    non-monotonic curve) to ``out``. The white-matter mean (seg35 labels 1 and 20: left and right cerebral white
    matter) scales the curve, so it meets the same tissues in every subject."""
    import numpy as np

    sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "Python")]
    import DeepRegistrationLib as dr
    from fresh_data import contrast_from_t1

    image, labels = dr.read_image(image_path), dr.read_image(labels_path)
    wm = np.isin(np.rint(labels.data[0].numpy()), (1, 20))
    values = contrast_from_t1(image.data[0], float(image.data[0].numpy()[wm].mean()), contrast)
    dr.Image(values[None], image.grid, f"{image.name} ({contrast}-like)").write(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[-1])
    for path in write_voxelmorph_subject(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else DEFAULT_DATA):
        print(path)
