#!/usr/bin/env bash
# The recipe of the bundled learned metric DeepRegistrationLib/resources/models/metric-mr-{2d,3d}
# (similarity "learned:metric-mr"; the 2D or 3D network is taken by the images' dimension).
# Trains on OASIS 0002 (3D T1, skull-stripped; 2D: its slices along all three axes, plus the six ANTs example
# T1 slices, which show skull and scalp) and, for 3D, the voxelmorph sample subject; OASIS 0001 is the validation
# image. Every second modality is a random intensity mapping of the image itself, so no multimodal data is used:
# the BrainWeb T1/PD slices and the ICBM152 T1/PD-like case the benchmark scores on are never seen.
# PROFILE=cpu (the bundled models, 2 CPU cores): 2D 4000 + 3000 + 1200 + 2 x 3000 steps (batch 24, 64^2 crops; the
#   two continued phases 14 min each at 0.45 min per 100 steps), 3D 7 x 3000 + 3 x 2000 steps
#   (batch 4, 40^3 crops; 3.3-4 h at 0.63-0.83 min per 100 steps, more where a step is slower: more than the
#   hour a CPU profile should take, for the precision the continued phases bought, Docs/LEARNED_METRIC.md); the
#   minutes and validation losses are on each model card.
# PROFILE=gpu: the same examples, 4x the steps (the examples are drawn on the CPU; the network is small).
# Environment: PYTHON (default .venv/bin/python), DEEPREG_DATA (default ../shared/data), THREADS, DIMS ("2 3").
# 3D examples include thick slices (--thick-slices 0.5: one image of half the pairs averaged over 1-3 voxels along
#   one axis), as a 2.4 mm slab is against a 1 mm T1.
# 2D in five phases: (1) from scratch, regressing the misalignment score (build/metric_base/metric-mr-2d: the 2D
#   model bundled before 2026-12-07); (2) a fine-tune of (1) with the slope term (--slope-weight 50: the change of
#   the mean score between readings a translation of 0.25-0.5 voxel either way is regressed onto the target's;
#   build/metric_base/metric-mr-2d-slope); (3) a fine-tune of (2) that adds outline bands (--outline 0.5: half of
#   the mixed-contrast examples map a band 1-6 voxels wide along the head's outline by a second, independent
#   curve; build/metric_base/metric-mr-2d-3, the 2D model bundled before the fourth session of 2026-12-07). On
#   BrainWeb T1 vs PD they cut phase 1's bias by 2.5x (Docs/LEARNED_METRIC.md). Its card asks for both polarities at inference
#   (--polarities 2: the inverted images are scored too, which halves the error again at twice the cost; Docs/LEARNED_METRIC.md).
#   (4) and (5): phase 3's objective continued for 3000 steps each at learning rate 3e-4 (seeds 4 and 5), as 3D's
#   phases 2-6; (5) is the bundled model: on the two BrainWeb known cases 0.061 / 0.061 px (3) -> 0.056 / 0.042
#   (4) -> 0.047 / 0.043 px (5), NMI 0.036 / 0.043 (Docs/LEARNED_METRIC.md). PHASES2D=N bundles 2D phase N (3 to bundle phase 3).
#   BASE=<folder prefix> skips phase 1 (fine-tunes <prefix>-2d, <prefix>-3d); SLOPED=<folder> skips phases 1 and
#   2 of 2D (fine-tunes <folder>); OUTLINED=<folder> skips phases 1-3 (continues <folder> as phase 4);
#   CONTINUED2D=<folder> runs the last 2D phase alone from <folder>.
# 3D in ten phases: (1) from scratch (build/metric_base/metric-mr-3d: the 3D model bundled before the third
#   session of 2026-12-07); (2) to (6) the same objective continued for 3000 steps each at learning rate 3e-4
#   (cosine decay again; seeds 2 to 6; in build/metric_base/metric-mr-3d-2 ... -6): on the ICBM T1 vs PD-like
#   slab the error fell from 1.37-1.63 mm (1) to 0.27-0.36 mm (6) over four rotations with the engine of the
#   time (Docs/LEARNED_METRIC.md). (7): phase 6 continued with blurred examples and the slope term (--blur 0.5:
#   one image of half the examples smoothed along every axis, sigma up to 1.2 voxels; --slope-weight 50
#   --slope-offset 0.5, as 2D): 0.18-0.24 mm, 0.12-0.16 mm with the sharp feature images of 2026-12-08.
#   (8) to (10), (10) the bundled model since the seventh session of 2026-12-08: phase 7's objective continued
#   for 2000 steps each (seeds 8 to 10; 24 min each on 2 cores): 0.10-0.12 mm (8), 0.06-0.10 mm (9) and
#   0.047-0.066 mm (10) over the four rotations (NMI 0.05), the cost's minimum along the slab normal +0.10 (7)
#   -> +0.07 -> +0.05 -> +0.03 mm (Docs/LEARNED_METRIC.md). CONTINUED=<folder> skips the phases before the last
#   (continues <folder> as phase 10, or as phase N). PHASES=N bundles phase N's model instead (PHASES=1: phase 1 alone, within the hour
#   on 2 cores; 0.31-0.49 mm on the slab since the engine's sharp feature images of 2026-12-08, 1.4-1.6 mm
#   before). The slope fine-tune (1200 steps) did not help in 3D at phase 1; label renderings as second
#   modalities (deepreg train metric --labels --render 0.5) gave the same as phase 8 without them (Docs).
# Usage: scripts/train_learned_metric.sh [OUT_PREFIX] [extra deepreg train metric arguments, both phases]
#   (default OUT_PREFIX DeepRegistrationLib/resources/models/metric-mr)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${1:-DeepRegistrationLib/resources/models/metric-mr}"
PY="${PYTHON:-.venv/bin/python}"
DATA="${DEEPREG_DATA:-../shared/data}"
WORK=build/brain_data
case "${PROFILE:-cpu}" in
  cpu) S2=4000; S3=3000; F2=3000; F3=1200; C3=3000; C2=3000; R3=2000 ;;
  gpu) S2=16000; S3=12000; F2=12000; F3=4800; C3=12000; C2=12000; R3=8000 ;;
  *) echo "PROFILE must be cpu or gpu" >&2; exit 2 ;;
esac
case "${PHASES:-10}" in
  [1-9]|[1-9][0-9]) ;;
  *) echo "PHASES must be a whole number from 1 (the 3D phase whose model is bundled)" >&2; exit 2 ;;
esac
case "${PHASES2D:-5}" in
  [3-9]|[1-9][0-9]) ;;
  *) echo "PHASES2D must be a whole number from 3 (the 2D phase whose model is bundled)" >&2; exit 2 ;;
esac
# A phase replaces its model folder only when it succeeds: `aside` moves the old folder to FOLDER.previous (the
# command writes its folder atomically and refuses a non-empty one), `keep` checks the new one is there and drops
# the old, and if the command fails or the run is interrupted the old folder is put back (trap on EXIT).
ASIDE=""
aside() { rm -rf "$1.previous"; if [ -e "$1" ]; then mv "$1" "$1.previous"; fi; ASIDE="$1"; }
keep() {
  [ -f "$ASIDE/weights.pt" ] || { echo "train_learned_metric.sh: no model was written to $ASIDE" >&2; exit 1; }
  rm -rf "$ASIDE.previous"; ASIDE=""
}
restore() { if [ -n "$ASIDE" ] && [ -e "$ASIDE.previous" ]; then rm -rf "$ASIDE"; mv "$ASIDE.previous" "$ASIDE"; fi; }
trap restore EXIT
OASIS="$DATA/brain3d/oasis"
LICENCE="Apache-2.0 (weights). Trained on OASIS-1 derived data (OASIS data use agreement; cite Marcus et al. 2007 and Hoopes et al. 2021), ANTsPy example slices (Apache-2.0) and the voxelmorph sample subject (Apache-2.0)"
for DIM in ${DIMS:-2 3}; do
  if [ "$DIM" = 2 ]; then
    IMAGES=("$OASIS/OAS1_0002_MR1_aligned_norm.nii.gz" "$DATA"/brain2d/antspy_slices/r*slice.jpg)
    STEPS1="${STEPS:-$S2}"
    ARGS=(--batch 24 --crop 64 --channels 24 24 24)
  else
    [ -f "$WORK/vm_norm.nii.gz" ] || "$PY" benchmarks/brain_data.py "$WORK" "$DATA/brain3d" >/dev/null
    IMAGES=("$OASIS/OAS1_0002_MR1_aligned_norm.nii.gz" "$WORK/vm_norm.nii.gz")
    STEPS1="${STEPS:-$S3}"
    ARGS=(--batch 4 --crop 40 --channels 16 16 16 --thick-slices 0.5)
  fi
  DESCRIPTION="Learned similarity metric for MR (${DIM}D): shared encoder + point-wise head regressing the local misalignment of two renderings of one image (random intensity mappings as second modality)"
  BASE_DIR="${BASE:-build/metric_base/metric-mr}-${DIM}d"
  if [ "$DIM" = 3 ]; then SKIP="${BASE:-}${CONTINUED:-}"; else SKIP="${BASE:-}${SLOPED:-}${OUTLINED:-}${CONTINUED2D:-}"; fi
  LAST="${PHASES:-10}"  # 3D: the phase whose model is bundled
  if [ "$DIM" = 3 ] && [ "$LAST" = 1 ]; then BASE_DIR="${PREFIX}-3d"; fi
  if [ -z "$SKIP" ]; then
    mkdir -p "$(dirname "$BASE_DIR")"; aside "$BASE_DIR"  # the command writes a new model folder only
    "$PY" -m DeepRegistrationLib train metric --dim "$DIM" --images "${IMAGES[@]}" \
      --val-images "$OASIS/OAS1_0001_MR1_aligned_norm.nii.gz" "${ARGS[@]}" --steps "$STEPS1" \
      --spacings 1 2 4 8 --lr 1e-3 --seed 0 --validate-every 100 --threads "${THREADS:-2}" \
      --max-minutes "${MAX_MINUTES:-0}" --name "metric-mr-${DIM}d" \
      --description "$DESCRIPTION; recipe scripts/train_learned_metric.sh (PROFILE=${PROFILE:-cpu})" \
      --licence "$LICENCE" --out "$BASE_DIR" "${@:2}"
    keep
  fi
  if [ "$DIM" = 3 ]; then
    FROM="${CONTINUED:-$BASE_DIR}"
    for SEED in $([ -n "${CONTINUED:-}" ] && echo "$LAST" || seq 2 "$LAST"); do
      if [ "$SEED" = "$LAST" ]; then OUT="${PREFIX}-3d"; else OUT="${BASE:-build/metric_base/metric-mr}-3d-$SEED"; fi
      aside "$OUT"
      EXTRA=(); WITH=""; STEPS3="$C3"  # phase 7 on: blurred examples and the slope term; 8 on: 2000 steps each
      if [ "$SEED" -ge 7 ]; then EXTRA=(--blur 0.5 --slope-weight 50 --slope-offset 0.5); WITH=", with blurred examples and the slope term"; fi
      if [ "$SEED" -ge 8 ]; then STEPS3="$R3"; fi
      "$PY" -m DeepRegistrationLib train metric --dim 3 --images "${IMAGES[@]}" \
        --val-images "$OASIS/OAS1_0001_MR1_aligned_norm.nii.gz" "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} --steps "$STEPS3" --init "$FROM" \
        --spacings 1 2 4 8 --lr 3e-4 --seed "$SEED" --validate-every 100 --threads "${THREADS:-2}" \
        --max-minutes "${MAX_MINUTES:-0}" --name "metric-mr-3d" \
        --description "$DESCRIPTION, trained on for $STEPS3 more steps at a lower learning rate$WITH; phase $SEED of scripts/train_learned_metric.sh (PROFILE=${PROFILE:-cpu})" \
        --licence "$LICENCE" --out "$OUT" "${@:2}"
      keep
      FROM="$OUT"
    done
    continue
  fi
  # phases 2-5 share these; phases 2 and 3 run at lr 1e-3 with seed 1, the continued ones at lr 3e-4, seed = phase
  COMMON=(--dim 2 --images "${IMAGES[@]}" --val-images "$OASIS/OAS1_0001_MR1_aligned_norm.nii.gz" "${ARGS[@]}"
          --slope-weight 50 --slope-offset 0.5 --spacings 1 2 4 8 --validate-every 100
          --threads "${THREADS:-2}" --max-minutes "${MAX_MINUTES:-0}" --name "metric-mr-2d" --licence "$LICENCE")
  SLOPED_DIR="${SLOPED:-build/metric_base/metric-mr-2d-slope}"
  if [ -z "${SLOPED:-}${OUTLINED:-}${CONTINUED2D:-}" ]; then
    aside "$SLOPED_DIR"
    "$PY" -m DeepRegistrationLib train metric "${COMMON[@]}" --lr 1e-3 --seed 1 --steps "$F2" --init "$BASE_DIR" \
      --description "$DESCRIPTION, fine-tuned with the slope term; phase 2 of scripts/train_learned_metric.sh (PROFILE=${PROFILE:-cpu})" \
      --out "$SLOPED_DIR" "${@:2}"
    keep
  fi
  LAST2="${PHASES2D:-5}"  # 2D: the phase whose model is bundled
  OUTLINED_DIR="${OUTLINED:-build/metric_base/metric-mr-2d-3}"
  if [ "$LAST2" = 3 ]; then OUTLINED_DIR="${PREFIX}-2d"; fi
  if [ -z "${OUTLINED:-}${CONTINUED2D:-}" ]; then
    aside "$OUTLINED_DIR"
    "$PY" -m DeepRegistrationLib train metric "${COMMON[@]}" --lr 1e-3 --seed 1 --steps "$F3" --init "$SLOPED_DIR" \
      --outline 0.5 --polarities 2 \
      --description "$DESCRIPTION, fine-tuned with the slope term, then with outline bands; phase 3 of scripts/train_learned_metric.sh (PROFILE=${PROFILE:-cpu})" \
      --out "$OUTLINED_DIR" "${@:2}"
    keep
  fi
  FROM="${CONTINUED2D:-$OUTLINED_DIR}"
  for P in $([ -n "${CONTINUED2D:-}" ] && echo "$LAST2" || seq 4 "$LAST2"); do  # the same objective continued at a lower learning rate, a new seed each phase
    if [ "$P" = "$LAST2" ]; then OUT="${PREFIX}-2d"; else OUT="build/metric_base/metric-mr-2d-$P"; fi
    aside "$OUT"
    "$PY" -m DeepRegistrationLib train metric "${COMMON[@]}" --lr 3e-4 --seed "$P" --steps "$C2" --init "$FROM" \
      --outline 0.5 --polarities 2 \
      --description "$DESCRIPTION, fine-tuned with the slope term, then with outline bands, then trained on for $C2 more steps at a lower learning rate; phase $P of scripts/train_learned_metric.sh (PROFILE=${PROFILE:-cpu})" \
      --out "$OUT" "${@:2}"
    keep
    FROM="$OUT"
  done
done
