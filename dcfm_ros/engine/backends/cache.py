"""The on-disk cache of exported ONNX folders (and the TensorRT engines built from them).

The shipped model lives inside the installed package, which may be read-only, so nothing is written
next to it: exports go to `cache_dir` (parameter `backend_cache_dir`; default
$XDG_CACHE_HOME/dcfm_ros, else ~/.cache/dcfm_ros), one folder per model hash + input size + export
version. A folder is used only if its manifest and every graph's metadata name that model, size and
version; anything else (stale, foreign, unfinished) is reported and rebuilt. A folder appears under
its final name only when complete (built under a temporary name, then renamed).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dcfm_ros.engine.backends.onnx_export import (
    META_PREFIX,
    Manifest,
    StaleExportError,
    check_metadata,
    export_key,
    export_onnx,
    graph_metadata,
)
from dcfm_ros.model import DCFM

if TYPE_CHECKING:
    from dcfm_ros.engine.backends.calibration import Calibration

log = logging.getLogger("dcfm_ros.engine.backends")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dcfm_ros"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def stderr_progress(line: str) -> None:
    print(f"dcfm_ros: {line}", file=sys.stderr, flush=True)


def expected_metadata(model: DCFM, size: tuple[int, int], model_hash: str,
                      dtype: str = "fp32", calibration_sha256: str | None = None) -> dict[str, str]:
    meta = graph_metadata(model, size, model_hash, dtype=dtype)
    if calibration_sha256 is not None:  # int8: the frames the graphs were calibrated on
        meta[META_PREFIX + "calibration_sha256"] = calibration_sha256
    return meta


def int8_key(model_hash: str, size: tuple[int, int], method: str, calibration_sha256: str) -> str:
    """The cache folder name of int8 graphs: the fp32 folder's, with the method and the calibration's
    hash (frames + count), so other calibration frames give another folder."""
    return export_key(model_hash, size, f"int8-{method}-{calibration_sha256[:16]}")


def _valid(folder: Path, expected: dict[str, str]) -> Manifest:
    manifest = Manifest.read(folder)
    check_metadata(manifest.metadata, expected, f"export folder {folder}")
    missing = [g.file for g in manifest.graphs.values() if not (folder / g.file).is_file()]
    if missing:
        raise StaleExportError(f"export folder {folder} lacks {', '.join(missing)}")
    return manifest


def _reuse(folder: Path, expected: dict[str, str],
           progress: Callable[[str], None] | None) -> Manifest | None:
    """The folder's manifest when its graphs are what `expected` says; None (said when the folder
    exists but is stale or foreign, so the caller rebuilds it) otherwise."""
    try:
        return _valid(folder, expected)
    except StaleExportError as exc:
        if folder.exists():
            log.warning("%s; rebuilding it", exc)
            if progress is not None:
                progress(f"{exc}; rebuilding it")
        return None


def ensure_export(model: DCFM, size: tuple[int, int], model_hash: str, cache_dir: str | Path | None,
                  progress: Callable[[str], None] | None = stderr_progress,
                  rebuild: bool = False, dtype: str = "fp32") -> tuple[Path, Manifest]:
    """The cache folder with `model`'s graphs at `size`, exported now if missing, stale or `rebuild`."""
    root = resolve_cache_dir(cache_dir) / "onnx"
    folder = root / export_key(model_hash, size, dtype)
    expected = expected_metadata(model, size, model_hash, dtype)
    cached = None if rebuild else _reuse(folder, expected, progress)
    if cached is not None:
        return folder, cached
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"cannot create the backend cache folder {root} ({exc}); set "
                           f"backend_cache_dir to a writable folder") from exc
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        if progress is not None:
            progress(f"exporting {model.config.backbone} at {size[0]}x{size[1]} to ONNX (once per model "
                     f"and size) into {folder}")
        export_onnx(model, tmp, size, progress=progress, dtype=dtype, model_hash=model_hash)
        if folder.exists():
            try:  # another process may have finished the same export meanwhile
                if not rebuild:
                    return folder, _valid(folder, expected)
            except StaleExportError:
                pass
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, _valid(folder, expected)


def ensure_int8(model: DCFM, size: tuple[int, int], model_hash: str, cache_dir: str | Path | None,
                method: str, calibration: Calibration,
                progress: Callable[[str], None] | None = stderr_progress,
                rebuild: bool = False) -> tuple[Path, Manifest]:
    """The cache folder with `model`'s int8 graphs at `size` (quantize.quantize_folder by `method` on
    `calibration`), next to the fp32 folder it is made from; quantized now if missing, stale or
    `rebuild`. Refused and rebuilt like ensure_export's folders."""
    from dcfm_ros.engine.backends.quantize import int8_dtype, quantize_folder

    fp32_folder, fp32_manifest = ensure_export(model, size, model_hash, cache_dir, progress)
    root = fp32_folder.parent
    folder = root / int8_key(model_hash, size, method, calibration.sha256)
    expected = expected_metadata(model, size, model_hash, int8_dtype(method), calibration.sha256)
    cached = None if rebuild else _reuse(folder, expected, progress)
    if cached is not None:
        return folder, cached
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        if progress is not None:
            progress(f"quantizing {model.config.backbone} at {size[0]}x{size[1]} to int8 ({method}, "
                     f"{len(calibration.frames)} calibration frames, once per calibration) into {folder}")
        quantize_folder(fp32_folder, fp32_manifest, tmp, method, calibration, progress)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, _valid(folder, expected)
