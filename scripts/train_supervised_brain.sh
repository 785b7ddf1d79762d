#!/usr/bin/env bash
# The recipe of the supervised registration model DeepRegistrationLib/resources/models/supervised-brain (presets
# supervised-brain and supervised-brain-io): the VoxelMorph network (VM-1 lite, instance-normalised,
# diffeomorphic) trained by regression of known displacements only, no image similarity:
#   * known pairs: a training subject and a random smooth deformation of it (the answer is that deformation);
#   * teacher pairs: the two training subjects and the displacement the engine's deformable-accurate preset finds
#     between them (computed here first, both directions), with the fixed side randomly deformed as well.
# Same images, model grid and deformation scale as the VoxelMorph recipe (scripts/train_voxelmorph_brain.sh):
# OASIS 0002 and the voxelmorph subject train, OASIS 0001 is held out (validation Dice on seg35).
# PROFILE=cpu (the bundled model, 2 CPU cores): 3 mm grid (56 x 64 x 72), 900 steps, measured 2026-11-28: 0.95 s/step,
#   14.3 min after the two teacher registrations; validation Dice 0.483 (step 150), 0.512 (200), 0.530 (400),
#   0.553 (500), 0.541 (800), 0.545 (900; affine start 0.48).
# PROFILE=gpu: 2 mm grid (80 x 96 x 112), 12000 steps.
# Environment (PYTHON, DEEPREG_DATA: scripts/brain_subjects.sh), THREADS,
#   MAX_MINUTES (stop with a checkpoint; RESUME=1 continues), STEPS.
# Usage: scripts/train_supervised_brain.sh [OUT_DIR] [extra deepreg train supervised arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/supervised-brain}"
EXTRA=("${@:2}")
source scripts/brain_subjects.sh
case "${PROFILE:-cpu}" in
  gpu) GRID=(--grid-size 80 96 112 --spacing 2); STEPS="${STEPS:-12000}"; VALIDATE=500 ;;
  cpu) GRID=(--grid-size 56 64 72 --spacing 3); STEPS="${STEPS:-900}"; VALIDATE=100 ;;
  *) echo "PROFILE must be gpu or cpu" >&2; exit 2 ;;
esac
A="${TRAIN_SUBJECTS[1]}"  # OASIS 0002 (TRAIN_SUBJECTS: --images A B --labels ...)
B="${TRAIN_SUBJECTS[2]}"  # the voxelmorph subject
for pair in "A B" "B A"; do  # teacher registrations: fixed first
  set -- $pair
  F="${!1}"; M="${!2}"; T="$WORK/teacher_${1}_from_${2}.h5"
  [ -f "$T" ] || "$PY" -m DeepRegistrationLib register --fixed "$F" --moving "$M" --preset deformable-accurate \
    --out-transform "$T" >/dev/null
done
"$PY" -m DeepRegistrationLib train supervised \
  "${TRAIN_SUBJECTS[@]}" \
  --val-images "$HELD_OUT_T1" --val-labels "$HELD_OUT_LABELS" \
  --teacher "$B" "$A" "$WORK/teacher_A_from_B.h5" --teacher "$A" "$B" "$WORK/teacher_B_from_A.h5" \
  --teacher-probability 0.5 --known-pairs 1 \
  --architecture vm1-lite-in "${GRID[@]}" --orientation LIA \
  --steps "$STEPS" --lr 1e-3 --reg 0.01 --supervised-weight 1 \
  --rotation-deg 0 --scaling 0 --translation-mm 0 --deformation-mm 4 \
  --seed 0 --validate-every "$VALIDATE" --checkpoint-every 200 --threads "${THREADS:-2}" \
  --max-minutes "${MAX_MINUTES:-0}" ${RESUME:+--resume} \
  --name supervised-brain \
  --description "Supervised registration network (VM-1 lite with instance normalisation, diffeomorphic) for T1 brain MRI: regression of known displacements only (random deformations of each subject and the deformable-accurate preset's registrations between the two subjects as teachers); recipe scripts/train_supervised_brain.sh (PROFILE=${PROFILE:-cpu})" \
  --licence "Apache-2.0 (weights). Trained on OASIS-1 derived data (OASIS data use agreement; cite Marcus et al. 2007 and Hoopes et al. 2021) and the voxelmorph repository's sample subject (Apache-2.0)" \
  --out "$OUT" "${EXTRA[@]}"
