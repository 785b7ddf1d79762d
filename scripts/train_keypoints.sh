#!/usr/bin/env bash
# The recipe of the bundled retinal keypoint network DeepRegistrationLib/resources/models/keypoints-retina
# (keypoint stage "detector": "learned"). Self-supervised: SIFT keypoints kept by homographic adaptation are the
# labels, random homographies of windows give the correspondences. Trained on the two colour photographs whose terms
# allow it (the scikit-image photograph, CC0, and the colour fundus of the SURF-PIIFD-RPM pair); validation pairs
# come from FIRE P01_1 and P03_2 (single images; the FIRE pairs the benchmark scores are never seen as pairs).
# PROFILE=cpu (the bundled model, 2 CPU cores): 1500 steps of 8 pairs of 192^2 windows; PROFILE=gpu: 4x the steps.
# Environment: PYTHON, DEEPREG_DATA (default ../shared/data), THREADS, STEPS, MAX_MINUTES.
# Usage: scripts/train_keypoints.sh [OUT]   (default DeepRegistrationLib/resources/models/keypoints-retina)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/keypoints-retina}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${DEEPREG_DATA:-../shared/data}/retina"
case "${PROFILE:-cpu}" in
  cpu) STEPS_DEFAULT=1500 ;;
  gpu) STEPS_DEFAULT=6000 ;;
  *) echo "PROFILE must be cpu or gpu" >&2; exit 2 ;;
esac
"$PY" -m DeepRegistrationLib train keypoints \
  --images "$DATA/skimage_retina.jpg" "$DATA/cf_fa_pair/color_fundus_f1.jpg" \
  --val-images "$DATA/fire/P01_1.jpg" "$DATA/fire/P03_2.jpg" \
  --working-size 512 --size 192 --steps "${STEPS:-$STEPS_DEFAULT}" --batch 8 --lr 1e-3 --seed 0 --validate-every 100 \
  --threads "${THREADS:-2}" --max-minutes "${MAX_MINUTES:-0}" --name keypoints-retina \
  --description "Retinal keypoint network (SuperPoint-style detector and descriptor heads on one encoder), self-supervised: homographic adaptation of SIFT keypoints, synthetic homographies; recipe scripts/train_keypoints.sh (PROFILE=${PROFILE:-cpu})" \
  --licence "Apache-2.0 (weights), for research use: trained on the scikit-image retina photograph (CC0) and the SURF-PIIFD-RPM colour fundus photograph (research and educational use only)" \
  --out "$OUT"
