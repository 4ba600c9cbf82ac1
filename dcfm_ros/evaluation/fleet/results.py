"""Per-bag result files: OUT/bags/<bag id>.json, each written under a temporary name and renamed as its bag
finishes, so a file that exists is whole. A result counts as done for a later run when it is "ok" and
carries the same run key (model bytes + scoring parameters, run_spec.run_key); errors are retried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation.fleet.bags import bag_id
from dcfm_ros.evaluation.fleet.run_spec import RESULT_VERSION
from dcfm_ros.evaluation.report import atomic_path


class ResultStore:
    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir) / "bags"

    def path_for(self, bag: Path) -> Path:
        return self.dir / f"{bag_id(bag)}.json"

    def load(self, bag: Path) -> dict[str, Any] | None:
        """The stored result of `bag` (any status), None when there is none or it does not parse."""
        path = self.path_for(bag)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def done(self, bag: Path, key: str) -> dict[str, Any] | None:
        """The stored result when it can be reused for a run with `key`."""
        doc = self.load(bag)
        if doc is None or doc.get("status") != "ok" or doc.get("key") != key \
                or doc.get("result_version") != RESULT_VERSION:
            return None
        return doc

    def write(self, result: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{result['bag_id']}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result) + "\n")
        return path
