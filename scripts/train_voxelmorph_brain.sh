#!/usr/bin/env bash
# The recipe of the brain model DeepRegistrationLib/resources/models/voxelmorph-brain (T1 brain MRI, affinely aligned input).
# Trains on OASIS 0002 and the voxelmorph subject (images + seg35 labels, from ../shared/data); OASIS 0001 is
# held out (validation only), so every benchmark pair has a subject the model never saw in training.
#
# PROFILE=gpu (the bundled model): VM-1 lite with instance normalisation (vm1-lite-in) on a 2 mm grid
#   (80 x 96 x 112, covers the 160 x 192 x 224 mm OASIS crop), 2 mm being the finest grid whose CPU inference stays
#   within a few seconds; random smooth deformations of 4 mm. Measured on an NVIDIA H100 (0.15 s/step): validation
#   Dice 0.605 (step 500), 0.651 (2000), 0.665 (4000), 0.660 (4325, the bundled model, ~14 min; the affine start is
#   0.48); the card (model.json) lists the invocations. The default STEPS is a budget, not a finish line: stop and
#   resume with MAX_MINUTES / RESUME=1.
# PROFILE=cpu: the same on a 3 mm grid (56 x 64 x 72), 4 mm deformations, 1200 steps, ~55 min on 2 CPU cores
#   (2.7-2.8 s/step). Measured (run F, 2026-11-23, stopped by MAX_MINUTES=55 at step 1229): validation Dice 0.540
#   (step 200), 0.572 (500), 0.578 (900), 0.571 (1200), 0.586 (1229) against 0.480 for the affine start; on the
#   benchmark pairs with the voxelmorph-brain preset's inference, mean Dice 0.641 (README). With 2 mm
#   deformations instead (runs D/E) it did not learn in an hour.
# Environment: STEPS, THREADS, MAX_MINUTES (stop with a checkpoint; run again with RESUME=1 to continue),
#   PYTHON (default .venv/bin/python), DEEPREG_DATA (default ../shared/data/brain3d).
# Usage: scripts/train_voxelmorph_brain.sh [OUT_DIR] [extra deepreg train voxelmorph arguments]
#   (default OUT_DIR DeepRegistrationLib/resources/models/voxelmorph-brain)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/voxelmorph-brain}"
case "${PROFILE:-gpu}" in
  gpu) GRID=(--grid-size 80 96 112 --spacing 2); STEPS="${STEPS:-12000}"; VALIDATE=500; DEFORM=4 ;;
  cpu) GRID=(--grid-size 56 64 72 --spacing 3); STEPS="${STEPS:-1200}"; VALIDATE=100; DEFORM=4 ;;
  *) echo "PROFILE must be gpu or cpu" >&2; exit 2 ;;
esac
source scripts/brain_subjects.sh
"$PY" -m DeepRegistrationLib train voxelmorph \
  "${TRAIN_SUBJECTS[@]}" \
  --val-images "$HELD_OUT_T1" --val-labels "$HELD_OUT_LABELS" \
  --architecture vm1-lite-in "${GRID[@]}" --orientation LIA \
  --steps "$STEPS" --lr 1e-3 --max-grad-norm 0 --lncc-window 5 --lncc-weight 1 --dice-weight 1 --reg 0.2 \
  --augment --rotation-deg 0 --scaling 0 --translation-mm 0 --deformation-mm "$DEFORM" --no-self-pairs \
  --synth 0 --known-pairs 0 \
  --seed 0 --validate-every "$VALIDATE" --checkpoint-every 200 --threads "${THREADS:-2}" \
  --max-minutes "${MAX_MINUTES:-0}" ${RESUME:+--resume} \
  --name voxelmorph-brain \
  --description "VoxelMorph (VM-1 lite with instance normalisation, diffeomorphic) for T1 brain MRI; semi-supervised (LNCC + Dice on seg35) on pairs of distinct subjects, each with a smooth random diffeomorphic deformation (${DEFORM} mm, no random affine) and intensity augmentation; recipe scripts/train_voxelmorph_brain.sh (PROFILE=${PROFILE:-gpu})" \
  --licence "Apache-2.0 (weights). Trained on OASIS-1 derived data (OASIS data use agreement; cite Marcus et al. 2007 and Hoopes et al. 2021) and the voxelmorph repository's sample subject (Apache-2.0)" \
  --out "$OUT" "${@:2}"
