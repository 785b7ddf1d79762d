#!/usr/bin/env bash
# The recipe of the bundled retinal vessel network DeepRegistrationLib/resources/models/vessels-retina
# (keypoint stage "vessel_model": "vessels-retina").
# Trains on pseudo-labels (each image's own Frangi vessel map; no manual annotation) of three images: the
# scikit-image fundus photograph (CC0) and the colour-fundus / fluorescein-angiogram pair (SURF-PIIFD-RPM
# repository, research and educational use); random inversion makes the network polarity-free. Validation:
# FIRE P01_1 and P03_2 (photographs the network never trains on; Dice against their pseudo-labels, as they are and
# inverted). The FIRE pairs the benchmark scores are not trained on.
# PROFILE=cpu (the bundled model, 2 CPU cores): 2500 steps of 8 crops of 160^2 (~15 min); PROFILE=gpu: 4x the steps.
# Environment: PYTHON (default .venv/bin/python), DEEPREG_DATA (default ../shared/data), THREADS, STEPS, MAX_MINUTES.
# Usage: scripts/train_vessels.sh [OUT]   (default DeepRegistrationLib/resources/models/vessels-retina)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/vessels-retina}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${DEEPREG_DATA:-../shared/data}/retina"
case "${PROFILE:-cpu}" in
  cpu) STEPS_DEFAULT=2500 ;;
  gpu) STEPS_DEFAULT=10000 ;;
  *) echo "PROFILE must be cpu or gpu" >&2; exit 2 ;;
esac
"$PY" -m DeepRegistrationLib train vessels \
  --images "$DATA/skimage_retina.jpg" "$DATA/cf_fa_pair/color_fundus_f1.jpg" "$DATA/cf_fa_pair/fluorescein_angio_f2.jpg" \
  --polarity dark dark bright \
  --val-images "$DATA/fire/P01_1.jpg" "$DATA/fire/P03_2.jpg" --val-polarity dark \
  --steps "${STEPS:-$STEPS_DEFAULT}" --batch 8 --crop 160 --lr 2e-3 --seed 0 --validate-every 250 \
  --threads "${THREADS:-2}" --max-minutes "${MAX_MINUTES:-0}" --name vessels-retina \
  --description "Retinal vessel probability (2D U-Net), polarity-free: trained on Frangi pseudo-labels of a colour photograph's green channel and an angiogram, inputs randomly inverted; recipe scripts/train_vessels.sh (PROFILE=${PROFILE:-cpu})" \
  --licence "Apache-2.0 (weights), for research use: trained on the scikit-image retina photograph (CC0) and the SURF-PIIFD-RPM colour-fundus / fluorescein-angiogram pair (research and educational use only)" \
  --out "$OUT"
