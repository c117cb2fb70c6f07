"""``python -m rarespur export mlflow|tensorboard RESULTS_DIR``: replay a finished store into a tracker.

Everything a live logger sends is in the store already (config.json, history.json, record.json and the
run's files), so any store can be exported, however it was run: locally, on SLURM, packed, or before
loggers existed. This is the safe route for SLURM sweeps: thousands of jobs writing one SQLite file on
a network filesystem would corrupt it; one export process after the sweep does not. Runs the tracker
holds finished already (logged live, or exported before) are skipped, so exporting twice adds nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rarespur.errors import MissingFileError
from rarespur.store.collect import finished_runs
from rarespur.store.run_dir import CONFIG, read_record
from rarespur.tracking.loggers import build_logger, require_package
from rarespur.tracking.session import Tracking, run_info

log = logging.getLogger(__name__)


@dataclass
class Exported:
    added: int = 0  # runs written to the tracker now
    present: int = 0  # runs it held finished already


def export_store(results_dir: str | Path, tracker: str, settings: dict[str, Any]) -> Exported:
    """Every finished run of `results_dir` into `tracker` (``mlflow`` or ``tensorboard``, with the settings
    its logger group has: ``tracking_uri`` and ``experiment_name``, or ``save_dir``)."""
    results_dir = Path(results_dir).expanduser().resolve()
    if not results_dir.is_dir():
        raise MissingFileError(f"results directory {results_dir} does not exist; pass the run store (results_dir)")
    require_package(tracker)
    counts = Exported()
    runs = finished_runs(results_dir)
    for i, run in enumerate(runs, 1):
        config = json.loads((run / CONFIG).read_text())
        record = read_record(run)
        info = run_info(config, run.name, record.get("packed_with.pack", ""))
        tracking = Tracking([(tracker, build_logger(tracker, settings, str(results_dir)))], info, recomputed=False)
        if not tracking.taken:
            counts.present += 1
            continue
        tracking.finish(record, run)  # with the run's stored histories
        counts.added += 1
        if i % 100 == 0:
            log.info("%d of %d runs exported", i, len(runs))
    return counts
