#!/usr/bin/env bash
# The recipe of the bundled PD -> T1 translation network DeepRegistrationLib/resources/models/translation-brainweb-pd-t1
# (stage "translate", preset multimodal-rigid-translated).
# NeMAR (geometry-preserving): the translator is trained jointly with a small registration network on crops of the
# BrainWeb PD and T1 slices (ITK's example data, simulated from one anatomy: the only real PD/T1 pair here), each PD
# crop moved by a random rotation (<= 10 deg), scale (+-6 %) and shift (<= 6 px); the registration network is
# discarded. The slices are aligned, so the un-moved crops also give L1(T(PD), T1) (LAMBDA_PAIRED, default 60): NeMAR
# alone left the translation 0.5 px / 0.4 deg off (a global shift commutes with the registration), this term fixes
# it. Validation: the same anatomy with ITK's 20-pixel border (aligned), L1 to the T1 and the shift between
# the translation and the T1 by phase correlation. The model is 2D, for 1 mm pixels.
# PROFILE=cpu (the bundled model, 2 CPU cores): 2000 steps of 4 crops of 96^2 (~9-11 min); PROFILE=gpu: 4x the steps,
# 8 crops of 128^2.
# Environment: PYTHON (default .venv/bin/python), DEEPREG_DATA (default ../shared/data), THREADS, STEPS, MAX_MINUTES,
# METHOD (nemar, default; cyclegan for the unpaired baseline), LAMBDA_PAIRED (0: NeMAR alone).
# Usage: scripts/train_translation_brainweb.sh [OUT]   (default DeepRegistrationLib/resources/models/translation-brainweb-pd-t1)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/translation-brainweb-pd-t1}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${DEEPREG_DATA:-../shared/data}/multimodal2d"
case "${PROFILE:-cpu}" in
  cpu) STEPS_DEFAULT=2000; BATCH=4; CROP=96; DEVICE=cpu ;;
  gpu) STEPS_DEFAULT=8000; BATCH=8; CROP=128; DEVICE=cuda ;;
  *) echo "PROFILE must be cpu or gpu" >&2; exit 2 ;;
esac
METHOD="${METHOD:-nemar}"
"$PY" -m DeepRegistrationLib train translation --method "$METHOD" \
  --source "$DATA/BrainProtonDensitySlice.png" --target "$DATA/BrainT1Slice.png" \
  --val-source "$DATA/BrainProtonDensitySliceBorder20.png" --val-target "$DATA/BrainT1SliceBorder20.png" \
  --source-modality PD --target-modality T1 \
  --steps "${STEPS:-$STEPS_DEFAULT}" --batch "$BATCH" --crop "$CROP" --lr 2e-4 --seed 0 --validate-every 100 \
  --lambda-paired "${LAMBDA_PAIRED:-60}" \
  --channels 16 --blocks 6 --norm batch --device "$DEVICE" \
  --threads "${THREADS:-2}" --max-minutes "${MAX_MINUTES:-0}" --name "$(basename "$OUT")" \
  --description "PD -> T1 translation (2D ResNet generator, ${METHOD}), trained on the BrainWeb PD/T1 slice pair (ITK example data, one simulated anatomy, 1 mm pixels); recipe scripts/train_translation_brainweb.sh (PROFILE=${PROFILE:-cpu})" \
  --licence "Apache-2.0 (weights); trained on ITK's BrainWeb example slices (Apache-2.0; cite BrainWeb, Cocosco/Kwan/Collins)" \
  --out "$OUT"
