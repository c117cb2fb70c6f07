"""``logger=tensorboard``: one event folder per run key, its config and final metrics as an HParams session,
so TensorBoard's HParams dashboard compares the whole grid."""

from __future__ import annotations

import shutil
from pathlib import Path

from rarespur.store.atomic import write_atomic
from rarespur.tracking.run_logger import (
    FAILED,
    FINISHED,
    RUNNING,
    STATUS_FILE,
    Point,
    RunInfo,
    RunLogger,
    folder_status,
    hparam_value,
)

FINAL_PREFIX = "final/"  # the record's metrics, beside the epoch curves of the same name


class TensorBoardLogger(RunLogger):
    def __init__(self, save_dir: str | Path) -> None:
        self.root = Path(save_dir).expanduser()
        self.folder = self.root
        self.info: RunInfo | None = None
        self.writer = None

    def start(self, info: RunInfo, recomputed: bool) -> bool:
        self.folder, self.info = self.root / info.key, info
        if folder_status(self.folder) == FINISHED:
            if not recomputed:
                return False
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / STATUS_FILE, RUNNING)
        return True

    def logged(self) -> set[tuple[str, int]]:
        if not any(self.folder.glob("events.out.tfevents.*")):
            return set()
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(self.folder))
        events.Reload()
        return {(tag, event.step) for tag in events.Tags()["scalars"] for event in events.Scalars(tag)}

    def log_points(self, points: list[Point]) -> None:
        writer = self._writer()
        for epoch, name, value in points:
            writer.add_scalar(name, value, epoch)
        writer.flush()

    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer()
        config = {name: hparam_value(value) for name, value in self.info.params.items()}
        config.update({f"tag.{name}": value for name, value in self.info.tags.items()})
        final = {FINAL_PREFIX + name: value for name, value in metrics.items()}
        # the session only: without an experiment summary of its own, TensorBoard's HParams dashboard takes its
        # columns from every run's session, not from one run that may lack another's metrics
        _, session_start, session_end = hparams(config, final)
        writer._get_file_writer().add_summary(session_start)
        writer._get_file_writer().add_summary(session_end)
        for name, value in final.items():
            writer.add_scalar(name, value, 0)
        self._close()
        write_atomic(self.folder / STATUS_FILE, FINISHED)

    def fail(self) -> None:
        self._close()
        write_atomic(self.folder / STATUS_FILE, FAILED)

    def _writer(self):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        return self.writer

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
