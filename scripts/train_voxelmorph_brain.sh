#!/usr/bin/env bash
# The recipe of the brain model Resources/Models/voxelmorph-brain (T1 brain MRI, affinely aligned input).
# Trains on OASIS 0002 and the voxelmorph subject (images + seg35 labels, from ../shared/data); OASIS 0001 is
# held out (validation only), so every benchmark pair has a subject the model never saw in training.
# 45 min on 2 CPU cores (1400 steps), which is NOT enough: the network did not learn to deform (README).
# Run it on a GPU with e.g. STEPS=20000 THREADS=8.
# Usage: scripts/train_voxelmorph_brain.sh [OUT_DIR]   (default Resources/Models/voxelmorph-brain)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-Resources/Models/voxelmorph-brain}"
DATA="${DEEPREG_DATA:-../shared/data/brain3d}"
WORK=build/brain_data
.venv/bin/python benchmarks/brain_data.py "$WORK" >/dev/null
.venv/bin/deepreg train voxelmorph \
  --images "$DATA/oasis/OAS1_0002_MR1_aligned_norm.nii.gz" "$WORK/vm_norm.nii.gz" \
  --labels "$DATA/oasis/OAS1_0002_MR1_aligned_seg35.nii.gz" "$WORK/vm_seg35.nii.gz" \
  --val-images "$DATA/oasis/OAS1_0001_MR1_aligned_norm.nii.gz" \
  --val-labels "$DATA/oasis/OAS1_0001_MR1_aligned_seg35.nii.gz" \
  --architecture vm1-lite --grid-size 56 64 72 --spacing 3 --orientation LIA \
  --steps "${STEPS:-1400}" --lr 4e-4 --max-grad-norm 1 --lncc-window 5 --lncc-weight 1 --dice-weight 1 --reg 1 --augment --synth 0.1 --known-pairs 0.5 --supervised-weight 0.1 \
  --seed 0 --validate-every 250 --checkpoint-every 100 --threads "${THREADS:-2}" \
  --name voxelmorph-brain \
  --description "VoxelMorph (VM-1 lite, diffeomorphic) for T1 brain MRI on a 3 mm grid; semi-supervised (LNCC + Dice on seg35) with random deformations, known-deformation pairs and SynthMorph-style synthesis" \
  --licence "Apache-2.0 (weights). Trained on OASIS-1 derived data (OASIS data use agreement; cite Marcus et al. 2007 and Hoopes et al. 2021) and the voxelmorph repository's sample subject (Apache-2.0)" \
  --out "$OUT" "${@:2}"
