#!/usr/bin/env bash
# Recipe of the bundled model DeepRegistrationLib/resources/models/voxelmorph-brain-mapped (preset
# voxelmorph-brain-multimodal): the T1 model voxelmorph-brain fine-tuned for what a map_contrast stage shows it.
# At inference the moving image of another contrast (PD, T2, ...) is mapped into the fixed T1's contrast by the
# conditional mean E[fixed | moving] through the affine result; the T1 network then sees a T1-like image with the
# mapping's errors (partial volumes at the brain's edge, tissues merged where the contrast curve folds). Here every
# training pair shows the network exactly that (--map-moving-contrast): the fixed image a real T1 (deformed), the
# moving one a real T1 through a random non-monotonic contrast curve (--remap 0.8) or its own contrast, mapped back
# into the fixed contrast by the conditional mean over the pair; the loss is LNCC between the real T1 images under
# the same deformations (--similarity-on-reference) + Dice on seg35 + diffusion.
# Same grid (80 x 96 x 112 x 2 mm) and training subjects (OASIS 0002, the voxelmorph subject) as voxelmorph-brain;
# OASIS 0001 is held out (validation: T1 pairs, to check the T1 skill is kept).
# PROFILE=cpu (the bundled model, 2 CPU cores): 600 steps at ~2.4 s/step (24 min). PROFILE=gpu: 4000 steps.
# Environment: PYTHON (default .venv/bin/python), DEEPREG_DATA (default ../shared/data/brain3d), THREADS,
#   MAX_MINUTES (stop with a checkpoint; RESUME=1 continues), STEPS.
# Usage: scripts/train_voxelmorph_brain_mapped.sh [OUT_DIR] [extra deepreg train voxelmorph arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/voxelmorph-brain-mapped}"
case "${PROFILE:-cpu}" in
  gpu) STEPS="${STEPS:-4000}"; VALIDATE=500 ;;
  cpu) STEPS="${STEPS:-600}"; VALIDATE=100 ;;
  *) echo "PROFILE must be gpu or cpu" >&2; exit 2 ;;
esac
source scripts/brain_subjects.sh
"$PY" -m DeepRegistrationLib train voxelmorph \
  --init DeepRegistrationLib/resources/models/voxelmorph-brain \
  "${TRAIN_SUBJECTS[@]}" \
  --val-images "$HELD_OUT_T1" --val-labels "$HELD_OUT_LABELS" \
  --steps "$STEPS" --lr 1e-4 --max-grad-norm 0 --lncc-window 5 --lncc-weight 1 --dice-weight 1 --reg 0.2 \
  --augment --rotation-deg 0 --scaling 0 --translation-mm 0 --deformation-mm 4 --no-self-pairs \
  --remap 0.8 --known-pairs 0 --similarity-on-reference --map-moving-contrast \
  --seed 0 --validate-every "$VALIDATE" --checkpoint-every 100 --threads "${THREADS:-2}" \
  --max-minutes "${MAX_MINUTES:-0}" ${RESUME:+--resume} \
  --name voxelmorph-brain-mapped \
  --description "VoxelMorph (VM-1 lite with instance normalisation, diffeomorphic) for a T1 fixed image and a moving brain MRI of another contrast mapped into T1 by the conditional mean (a map_contrast stage): voxelmorph-brain fine-tuned on real T1 images through random non-monotonic contrast curves mapped back by the conditional mean, LNCC between the real images + Dice on seg35 + diffusion; recipe scripts/train_voxelmorph_brain_mapped.sh (PROFILE=${PROFILE:-cpu})" \
  --modality "fixed: T1 brain MRI; moving: brain MRI of any contrast mapped into T1 (map_contrast); skull-stripped, affinely aligned" \
  --licence "Apache-2.0 (weights). Trained on OASIS-1 derived data (OASIS data use agreement; cite Marcus et al. 2007 and Hoopes et al. 2021) and the voxelmorph repository's sample subject (Apache-2.0)" \
  --out "$OUT" "${@:2}"
