"""A work_dir's log.jsonl, as the tests read it."""
from __future__ import annotations

import json
import os
from typing import Any


def log_events(work_dir: str | os.PathLike) -> list[dict[str, Any]]:
    with open(os.path.join(work_dir, "log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]
