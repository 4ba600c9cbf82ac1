#!/usr/bin/env bash
# N = 1, 2, 4 cameras through one dcfm_node (parameter cameras) vs N single-camera nodes, one after
# the other in the same run, same client, same frames (dcfm-stress soak --cameras N [--separate-nodes]).
# Usage: scripts/bench_multicam.sh OUT_DIR [FRAMES_PER_CAMERA] [SIZE] [TRANSPORT] [THREADS] [raw|jpeg]
#   (writes OUT_DIR/n<N>_<one|separate>.json)
set -euo pipefail
out=${1:?output folder}; per=${2:-60}; size=${3:-360x480}; transport=${4:-UDPv4}; threads=${5:-1}; input=${6:-raw}
py=${PYTHON:-python}
mkdir -p "$out"
for n in 1 2 4; do
  for mode in one separate; do
    extra=(); [ "$mode" = separate ] && extra=(--separate-nodes)
    [ "$input" = jpeg ] && extra+=(--compressed)
    echo "== $n camera(s), $mode node(s)" >&2
    "$py" -m dcfm_ros.tools.stress.cli --threads "$threads" --json soak --transport "$transport" \
        --cameras "$n" "${extra[@]}" --frames $((per * n)) --size "$size" --mark $((per * n)) \
        --in-flight 1 > "$out/n${n}_${mode}.json"
  done
done
