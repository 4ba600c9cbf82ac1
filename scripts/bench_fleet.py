"""Fleet-evaluation throughput, side by side in one run on one set of bags: dcfm-fleet-eval serial,
--workers 2, --ray (a local Ray with the machine's CPUs) and dcfm-bag-eval --max (the real node over ROS,
one bag after the other). The bags: the demo clip, copies of it, and an unseen synthetic video (ffmpeg's
testsrc2 pattern, out of the model's domain) made into a bag with dcfm-make-bag.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_fleet.py [OUT_DIR] [--copies N] [--video-frames N]

Prints one line per engine (frames, wall time of the whole command, frames/s of it and of the scoring
alone, the ratio to dcfm-bag-eval) and writes OUT_DIR/bench_fleet.json; also checks that the engines gave
the same numbers (mean confidence per bag, mIoU of the labelled ones).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "camvid_val_0016E5"


def _tool(*modules: str) -> list[str]:
    """`python -m` of the first of `modules` this tree has (this interpreter, this PYTHONPATH: the console
    scripts of an installed copy may point elsewhere)."""
    import importlib.util

    for module in modules:
        try:
            if importlib.util.find_spec(module) is not None:
                return [sys.executable, "-m", module]
        except ModuleNotFoundError:
            continue
    raise SystemExit(f"none of {modules} is importable")


def _make_bags(out: Path, copies: int, video_frames: int) -> tuple[list[Path], set[Path]]:
    """(bags, the ones with ground truth)."""
    import imageio_ffmpeg

    bags_dir = out / "bags"
    bags_dir.mkdir(parents=True, exist_ok=True)
    labelled = [DEMO]
    for i in range(copies):
        dst = bags_dir / f"demo_copy{i + 1}"
        if not dst.exists():
            shutil.copytree(DEMO, dst)
        labelled.append(dst)
    video_bag = bags_dir / "synthetic_testsrc2"
    if not video_bag.exists():
        mp4 = out / "testsrc2.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=480x360:rate=15", "-frames:v", str(video_frames),
                        "-pix_fmt", "yuv420p", str(mp4)], check=True)
        make_bag = _tool("dcfm_ros.tools.make_bag")
        subprocess.run([*make_bag, str(video_bag), "--video", str(mp4), "--compressed", "--jpeg-quality",
                        "85"], check=True, stdout=subprocess.DEVNULL)
    return [*labelled, video_bag], set(labelled)


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", nargs="?", type=Path, default=Path("out/bench_fleet"))
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--video-frames", type=int, default=101)
    args = p.parse_args()
    out: Path = args.out
    bags, labelled = _make_bags(out, args.copies, args.video_frames)
    fleet = _tool("dcfm_ros.tools.fleet_eval")
    load_before = os.getloadavg()
    rows: dict[str, dict] = {}
    for name, extra in (("serial", []), ("workers2", ["--workers", "2"]), ("ray_local", ["--ray"])):
        dst = out / name
        wall = _timed([*fleet, *map(str, bags), "--gt-topic", "/camera/labels", "--out", str(dst), "--rerun",
                       *extra])
        rep = json.loads((dst / "fleet_report.json").read_text())
        ex = rep["executor"]
        rows[name] = {"frames": rep["frames"], "command_s": wall, "scoring_s": ex["wall_s"],
                      "fps_command": rep["frames"] / wall, "fps_scoring": ex["frames_per_s"],
                      "threads": ex["threads"], "ray": ex.get("ray"),
                      "confidence": {Path(d["bag"]).name: d["confidence"]["mean"] for d in rep["drives"]},
                      "miou": {Path(d["bag"]).name: d["miou"] for d in rep["drives"]}}
    frames = 0
    wall = play = 0.0
    node_conf_miou = {}
    bag_eval = _tool("dcfm_ros.tools.bag_eval")
    for bag in bags:
        dst = out / "bag_eval" / bag.name
        gt = ["--gt-topic", "/camera/labels"] if bag in labelled else []
        wall += _timed([*bag_eval, str(bag), *gt, "--max", "--no-video", "--out", str(dst), "--overwrite",
                        "-q"])
        r = json.loads((dst / "report.json").read_text())
        frames += r["frames_out"]
        play += r["wall_time_s"]
        node_conf_miou[bag.name] = (r["metrics"] or {}).get("miou")
    rows["bag_eval_max"] = {"frames": frames, "command_s": wall, "scoring_s": play,
                            "fps_command": frames / wall, "fps_scoring": frames / play, "threads": None,
                            "miou": node_conf_miou}
    load_after = os.getloadavg()
    base = rows["bag_eval_max"]["fps_command"]
    same = all(rows[k]["confidence"] == rows["serial"]["confidence"]
               and rows[k]["miou"] == rows["serial"]["miou"] for k in ("workers2", "ray_local"))
    fleet_miou = rows["serial"]["miou"]
    node_same = all((v is None and fleet_miou[k] is None) or (v is not None and fleet_miou[k] is not None
                                                              and abs(fleet_miou[k] - v) < 1e-12)
                    for k, v in node_conf_miou.items())
    from dcfm_ros.evaluation.report import machine_info

    doc = {"bags": [str(b) for b in bags], "frames_per_run": rows["serial"]["frames"], "rows": rows,
           "fleet_engines_agree": same, "fleet_miou_equals_bag_eval": node_same,
           "loadavg_before": load_before, "loadavg_after": load_after, "machine": machine_info()}
    (out / "bench_fleet.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{len(bags)} bags, {rows['serial']['frames']} frames each run; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}; {doc['machine']['cpu']}, {os.cpu_count()} cores")
    print(f"{'engine':<14} {'frames':>6} {'command s':>10} {'frames/s':>9} {'scoring s':>10} {'frames/s':>9}"
          f" {'x bag-eval':>10}")
    for name, r in rows.items():
        print(f"{name:<14} {r['frames']:>6} {r['command_s']:>10.1f} {r['fps_command']:>9.2f} "
              f"{r['scoring_s']:>10.1f} {r['fps_scoring']:>9.2f} {r['fps_command'] / base:>10.2f}")
    print(f"same numbers serial / workers 2 / Ray: {same}; fleet mIoU == bag-eval mIoU per bag: {node_same}")


if __name__ == "__main__":
    main()
