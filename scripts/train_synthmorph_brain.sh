#!/usr/bin/env bash
# Recipe of a contrast-agnostic brain model (written to DeepRegistrationLib/resources/models/synthmorph-brain unless
# OUT_DIR is given; NOT bundled: the CPU runs so far reach a T1 -> PD validation Dice of 0.39-0.41, below the affine
# start, see the README's "Contrast-agnostic training"): the VoxelMorph network (VM-1 lite, instance-normalised,
# diffeomorphic) trained so that the contrast of either image does not matter (SynthMorph, Hoffmann et al., IEEE TMI 2022):
#   * each image of a pair is, independently, synthesised from its seg35 label map (random mean and noise per label,
#     blur; --synth 0.2), or else the real T1 through a random non-monotonic contrast curve (--remap 0.7 of the
#     rest), or else the real T1; then bias field, gamma and noise, and a random 4 mm diffeomorphic deformation;
#   * the loss is Dice on the warped seg35 labels + diffusion regularisation + LNCC between the two real T1 images
#     under the same deformations (--similarity-on-reference): whatever contrasts the network is shown, it is
#     trained by the dense signal that trained the T1 model. (Dice alone: 0.41 at best in 900 CPU steps; with the
#     references: 0.39 at best in 650.)
# Fine-tunes the T1 model voxelmorph-brain (same grid: 80 x 96 x 112 x 2 mm) on the same training subjects (OASIS 0002
# and the voxelmorph subject); OASIS 0001 is held out and rendered PD-like (benchmarks/brain_data.remap_contrast) for
# the validation Dice, so the validation pairs are T1 -> PD between distinct subjects.
# PROFILE=cpu (2 CPU cores): 900 steps at ~2.5-3.3 s/step (~40-50 min).
# PROFILE=gpu: the same grid, 6000 steps.
# Environment: PYTHON (default .venv/bin/python), DEEPREG_DATA (default ../shared/data/brain3d), THREADS,
#   MAX_MINUTES (stop with a checkpoint; RESUME=1 continues), STEPS, LR (default 1e-4).
# Usage: scripts/train_synthmorph_brain.sh [OUT_DIR] [extra deepreg train voxelmorph arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/synthmorph-brain}"
case "${PROFILE:-cpu}" in
  gpu) STEPS="${STEPS:-6000}"; VALIDATE=500 ;;
  cpu) STEPS="${STEPS:-900}"; VALIDATE=100 ;;
  *) echo "PROFILE must be gpu or cpu" >&2; exit 2 ;;
esac
source scripts/brain_subjects.sh
VAL="$WORK/oasis0001_pd.nii.gz"
VAL_LABELS="$HELD_OUT_LABELS"
[ -f "$VAL" ] || "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path
from brain_data import remap_contrast
remap_contrast(Path(sys.argv[1]), Path(sys.argv[2]), 'pd', Path(sys.argv[3]))" \
  "$HELD_OUT_T1" "$VAL_LABELS" "$VAL"
"$PY" -m DeepRegistrationLib train voxelmorph \
  --init DeepRegistrationLib/resources/models/voxelmorph-brain \
  "${TRAIN_SUBJECTS[@]}" \
  --val-images "$VAL" --val-labels "$VAL_LABELS" \
  --steps "$STEPS" --lr "${LR:-1e-4}" --max-grad-norm 0 --lncc-window 5 --lncc-weight 1 --dice-weight 1 --reg 0.2 \
  --augment --rotation-deg 0 --scaling 0 --translation-mm 0 --deformation-mm 4 --no-self-pairs \
  --synth 0.2 --remap 0.7 --known-pairs 0 --similarity-on-reference \
  --seed 0 --validate-every "$VALIDATE" --checkpoint-every 100 --threads "${THREADS:-2}" \
  --max-minutes "${MAX_MINUTES:-0}" ${RESUME:+--resume} \
  --name synthmorph-brain \
  --description "Contrast-agnostic VoxelMorph (VM-1 lite with instance normalisation, diffeomorphic) for brain MRI of any contrast (T1, T2, PD, ...), skull-stripped, affinely aligned: the T1 model voxelmorph-brain fine-tuned SynthMorph-style on images synthesised from seg35 label maps and on real T1 images through random non-monotonic contrast curves, Dice on seg35 + LNCC between the real T1 images under the same deformations + diffusion regularisation; recipe scripts/train_synthmorph_brain.sh (PROFILE=${PROFILE:-cpu})" \
  --modality "brain MRI of any contrast (T1, T2, PD, FLAIR-like), skull-stripped, affinely aligned" \
  --licence "Apache-2.0 (weights). Trained on OASIS-1 derived data (OASIS data use agreement; cite Marcus et al. 2007 and Hoopes et al. 2021) and the voxelmorph repository's sample subject (Apache-2.0)" \
  --out "$OUT" "${@:2}"
