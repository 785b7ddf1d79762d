# Sourced by the brain network recipes (train_voxelmorph_brain.sh, train_voxelmorph_brain_mapped.sh,
# train_synthmorph_brain.sh, train_supervised_brain.sh), from the repository root: the interpreter, the data
# folder, the training subjects (OASIS 0002 and the voxelmorph subject, the latter built once into build/brain_data)
# and the held-out OASIS 0001.
# Environment: PYTHON (default .venv/bin/python), DEEPREG_DATA (default ../shared/data/brain3d).
PY="${PYTHON:-.venv/bin/python}"
DATA="${DEEPREG_DATA:-../shared/data/brain3d}"
WORK=build/brain_data
[ -f "$WORK/vm_seg35.nii.gz" ] || "$PY" benchmarks/brain_data.py "$WORK" "$DATA" >/dev/null
TRAIN_SUBJECTS=(--images "$DATA/oasis/OAS1_0002_MR1_aligned_norm.nii.gz" "$WORK/vm_norm.nii.gz"
                --labels "$DATA/oasis/OAS1_0002_MR1_aligned_seg35.nii.gz" "$WORK/vm_seg35.nii.gz")
HELD_OUT_T1="$DATA/oasis/OAS1_0001_MR1_aligned_norm.nii.gz"
HELD_OUT_LABELS="$DATA/oasis/OAS1_0001_MR1_aligned_seg35.nii.gz"
