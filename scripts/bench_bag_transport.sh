#!/usr/bin/env bash
# Transport figures for dcfm-bag-eval (README "Evaluation and demo"): the demo clip as a raw bag and as
# the committed compressed one, each played with --max (reliable link, drop_policy none) through the
# shipped model with each Fast DDS builtin transport, side by side in one run. Prints one line per run.
#   scripts/bench_bag_transport.sh [OUT_DIR]     (needs `make setup`; CamVid val from ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/bench_transport}
BIN=.venv/bin
CAMVID=${CAMVID:-../shared/data/camvid}
mkdir -p "$OUT"
[ -d "$OUT/raw_bag" ] || "$BIN/dcfm-make-bag" "$OUT/raw_bag" --camvid "$CAMVID" --split val --sequence 0016E5 >/dev/null
for transport in UDPv4 DEFAULT LARGE_DATA; do
  for kind in raw compressed; do
    if [ "$kind" = raw ]; then bag=$OUT/raw_bag; topic=/camera/image; else bag=demo/camvid_val_0016E5; topic=/camera/image/compressed; fi
    "$BIN/dcfm-bag-eval" "$bag" --image-topic "$topic" --max --no-video --transport "$transport" \
      --out "$OUT/$kind-$transport" --overwrite -q >/dev/null
    "$BIN/python" - "$OUT/$kind-$transport" "$kind" "$transport" <<'PY'
import json, sys
from pathlib import Path

import numpy as np

from dcfm_ros.evaluation.report import read_frames_csv

out, kind, transport = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
r = json.loads((out / "report.json").read_text())
lat, eng = r["latency_ms"]["all"], r["engine_latency_ms"]["all"]
# paired per frame: what the transport and the node add to the engine's own time
added = [f.latency_ms - f.engine_ms for f in read_frames_csv(out / "frames.csv")
         if f.latency_ms is not None and f.engine_ms is not None]
print(f"{kind:10s} {transport:10s} frames {r['frames_in']}/{r['frames_out']} lost {r['frames_dropped']}  "
      f"{r['throughput_fps']:.2f} fps  latency p50 {lat['p50']:.1f} p95 {lat['p95']:.1f} ms  engine p50 "
      f"{eng['p50']:.1f} ms  added (latency - engine, per frame) p50 {np.median(added):.1f} "
      f"p95 {np.percentile(added, 95):.1f} ms")
PY
  done
done
