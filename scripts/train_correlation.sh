#!/usr/bin/env bash
# The recipe of the bundled retinal correlation network DeepRegistrationLib/resources/models/correlation-retina
# (stage "correlation", preset retina-learned). Needs the vessel network (scripts/train_vessels.sh) first: pairs are
# made from its vessel maps of the same three images (the scikit-image photograph, the colour-fundus / angiogram
# pair), each seen through random homographies; validation pairs come from FIRE P01_1 and P03_2 (single images; the
# FIRE pairs the benchmark scores are never seen as pairs).
# PROFILE=cpu (the bundled model, 2 CPU cores): 2000 steps of 8 pairs at 128^2; PROFILE=gpu: 4x the steps.
# REGISTRATION_WEIGHT=0 trains on the matching loss alone (the ablation in the README).
# Environment: PYTHON, DEEPREG_DATA (default ../shared/data), THREADS, STEPS, MAX_MINUTES.
# Usage: scripts/train_correlation.sh [OUT]   (default DeepRegistrationLib/resources/models/correlation-retina)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/correlation-retina}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${DEEPREG_DATA:-../shared/data}/retina"
case "${PROFILE:-cpu}" in
  cpu) STEPS_DEFAULT=2000 ;;
  gpu) STEPS_DEFAULT=8000 ;;
  *) echo "PROFILE must be cpu or gpu" >&2; exit 2 ;;
esac
"$PY" -m DeepRegistrationLib train correlation \
  --images "$DATA/skimage_retina.jpg" "$DATA/cf_fa_pair/color_fundus_f1.jpg" "$DATA/cf_fa_pair/fluorescein_angio_f2.jpg" \
  --vessel-model vessels-retina --val-images "$DATA/fire/P01_1.jpg" "$DATA/fire/P03_2.jpg" \
  --working-size 512 --size 128 --steps "${STEPS:-$STEPS_DEFAULT}" --batch 8 --lr 1e-3 --seed 0 --validate-every 100 \
  --registration-weight "${REGISTRATION_WEIGHT:-1}" \
  --threads "${THREADS:-2}" --max-minutes "${MAX_MINUTES:-0}" --name correlation-retina \
  --description "Retinal correlation network: deep features of two vessel maps, their 4D correlation volume, its mutual dual-softmax matches (MAGSAC++ homography) and a homography regressed from it; trained on synthetic homographies of real vessel maps with the dense-matching cross-entropy plus the vessel-map registration loss (Dice + cross-entropy + reverse hinge + Chamfer) of the regressed homography; recipe scripts/train_correlation.sh (PROFILE=${PROFILE:-cpu})" \
  --licence "Apache-2.0 (weights), for research use: trained on vessel maps of the scikit-image retina photograph (CC0) and the SURF-PIIFD-RPM colour-fundus / fluorescein-angiogram pair (research and educational use only)" \
  --out "$OUT"
