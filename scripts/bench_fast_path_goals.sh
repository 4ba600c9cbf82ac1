#!/usr/bin/env bash
# Every figure of issue 23's "Done when" (docs/fast-path.md), one after the other in one run on a
# quiet host, shipped model, 360x480 network, 2 threads. Prints each command's own report; nothing
# here judges a number. Usage: scripts/bench_fast_path_goals.sh OUT_DIR   (about 15 minutes, 2 cores)
set -euo pipefail
out=${1:?output folder}
venv=${VENV:-.venv}
model=dcfm_ros/models/camvid_efficientnet_lite0.safetensors
mkdir -p "$out/bags"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
step() { echo "== $1 (load $(cut -d' ' -f1 /proc/loadavg))" >&2; }

step "engine overhead: StreamEngine vs the same graph-I/O graphs called bare"
for p in fp32 bf16; do  # bf16: OpenVINO's hint (onnxruntime has no bf16 on the CPU)
  backends=openvino,onnxruntime; [ "$p" = bf16 ] && backends=openvino
  "$venv/bin/dcfm-bench" --model "$model" --size 360x480 --backends "$backends" --precision "$p" \
      --threads 2 --graph-io --overhead --frames 20 | tee "$out/overhead_$p.txt"
done
step "DCFM pays: the stream at the node's default policy vs the per-frame baseline"
"$venv/bin/dcfm-bench" --model "$model" --size 360x480 --backends openvino --precision bf16 --graph-io \
    --threads 2 --threshold 0.1 --max-interval 30 --intervals 1,2,5 --frames 15 | tee "$out/stream.txt"
step "precisions: fp32 / bf16 (auto) / int8, graph I/O"
"$venv/bin/python" scripts/bench_fast_path.py --backends openvino,onnxruntime --threads 2 --frames 12 \
    --variants io,io-bf16,io-int8 | tee "$out/precisions.txt"
step "camera size: decode + engine, 1920x1080 JPEG vs 480x360"
PYTHONPATH=test:$PYTHONPATH "$venv/bin/python" scripts/bench_camera_decode.py --frames 40 --big 1920x1080 \
    | tee "$out/camera.txt"
summary() {  # one line from a dcfm-bag-eval report
  "$venv/bin/python" - "$1/report.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat, m = r["latency_ms"]["all"], r.get("metrics") or {}
print(f"{sys.argv[2]}: {r['throughput_fps']:.1f} frames/s, e2e p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} "
      f"/ max {lat['max']:.1f} ms, out {r['frames_out']} of {r['frames_in']} (dropped {r['frames_dropped']}), "
      f"keyframes {r['keyframe_ratio']:.3f}, mIoU {m.get('miou')}, mVC_8 {m.get('mvc8')}")
PY
}
step "make demo at the defaults and at fp32, --max and --rate 1.0"
for play in --max "--rate 1.0"; do
  for p in auto fp32; do
    tag=${p}_$([ "$play" = --max ] && echo max || echo rate1)
    # shellcheck disable=SC2086
    "$venv/bin/dcfm-bag-eval" demo/camvid_val_0016E5 --image-topic /camera/image/compressed \
        --gt-topic /camera/labels $play --no-video --param precision=$p --out "$out/demo_$tag" --overwrite \
        > "$out/demo_$tag.log" 2>&1
    summary "$out/demo_$tag" "demo $tag"
  done
done
step "the demo drive at vehicle camera sizes through the node (JPEG, --max, the defaults)"
# bag-eval's default transport (UDPv4) and the shipped large-messages profile (LARGE_SHM); the
# demo bag (480x360) with both first
for t in UDPV4 LARGE_SHM; do
  "$venv/bin/dcfm-bag-eval" demo/camvid_val_0016E5 --image-topic /camera/image/compressed \
      --gt-topic /camera/labels --max --no-video --transport $t --out "$out/camera_480x360_$t" --overwrite \
      > "$out/camera_480x360_$t.log" 2>&1
  summary "$out/camera_480x360_$t" "camera 480x360 $t"
done
for size in 1440x1080 1920x1080; do
  bag=$out/bags/val_$size
  [ -d "$bag" ] || "$venv/bin/dcfm-make-bag" "$bag" --camvid ../shared/data/camvid --split val \
      --sequence 0016E5 --resize "$size" --compressed > /dev/null
  for t in UDPV4 LARGE_SHM; do
    "$venv/bin/dcfm-bag-eval" "$bag" --image-topic /camera/image/compressed --gt-topic /camera/labels --max \
        --no-video --transport $t --out "$out/camera_${size}_$t" --overwrite > "$out/camera_${size}_$t.log" 2>&1
    summary "$out/camera_${size}_$t" "camera $size $t"
  done
done
