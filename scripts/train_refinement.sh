#!/usr/bin/env bash
# The recipe of the bundled retinal dense refinement network DeepRegistrationLib/resources/models/refinement-retina
# (stage "dense_refinement", preset retina-learned). Needs the vessel network (scripts/train_vessels.sh) first:
# pairs are made from its vessel maps of the same three images as the correlation network's (the scikit-image
# photograph, the colour-fundus / angiogram pair), each read through random residual displacements; validation pairs
# come from FIRE P01_1 and P03_2 (single images; the FIRE pairs the benchmark scores are never seen as pairs).
# The maps are made at 768 px, the stage's default working size (--coarse-sizes 256 384 512 adds maps at those sizes:
# measured and not adopted, README).
# PROFILE=cpu (the bundled model, 2 CPU cores): 1500 steps of 8 windows of 192^2; PROFILE=gpu: 4x the steps.
# SUPERVISED_WEIGHT=0 trains on the seed's vessel-map loss alone (no synthetic truth).
# Environment: PYTHON, DEEPREG_DATA (default ../shared/data), THREADS, STEPS, MAX_MINUTES.
# Usage: scripts/train_refinement.sh [OUT]   (default DeepRegistrationLib/resources/models/refinement-retina)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-DeepRegistrationLib/resources/models/refinement-retina}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${DEEPREG_DATA:-../shared/data}/retina"
case "${PROFILE:-cpu}" in
  cpu) STEPS_DEFAULT=1500 ;;
  gpu) STEPS_DEFAULT=6000 ;;
  *) echo "PROFILE must be cpu or gpu" >&2; exit 2 ;;
esac
"$PY" -m DeepRegistrationLib train refinement \
  --images "$DATA/skimage_retina.jpg" "$DATA/cf_fa_pair/color_fundus_f1.jpg" "$DATA/cf_fa_pair/fluorescein_angio_f2.jpg" \
  --vessel-model vessels-retina --val-images "$DATA/fire/P01_1.jpg" "$DATA/fire/P03_2.jpg" \
  --working-size 768 --size 192 --steps "${STEPS:-$STEPS_DEFAULT}" --batch 8 --lr 1e-3 --seed 0 --validate-every 100 \
  --max-corner-px 8 --max-elastic-px 4 --smoothness 1 --supervised-weight "${SUPERVISED_WEIGHT:-0.1}" \
  --threads "${THREADS:-2}" --max-minutes "${MAX_MINUTES:-0}" --name refinement-retina \
  --description "Retinal dense refinement network: a U-Net on the fixed vessel map and the moving one resampled through the previous (global) transform predicts the residual flow; trained on synthetic residual displacements (corner-jitter homographies + smooth fields) of real vessel maps with the vessel-map registration loss (Dice + cross-entropy + reverse hinge + Chamfer), a diffusion regulariser and ${SUPERVISED_WEIGHT:-0.1} x the end-point error to the synthetic truth; recipe scripts/train_refinement.sh (PROFILE=${PROFILE:-cpu})" \
  --licence "Apache-2.0 (weights), for research use: trained on vessel maps of the scikit-image retina photograph (CC0) and the SURF-PIIFD-RPM colour-fundus / fluorescein-angiogram pair (research and educational use only)" \
  --out "$OUT"
