"""``logger=tensorboard``: one event folder per run key, its config and final metrics as an HParams session,
so TensorBoard's HParams dashboard compares the whole grid."""

from __future__ import annotations

from pathlib import Path

from rarespur.store.atomic import write_atomic
from rarespur.tracking.run_logger import FAILED, FINISHED, RUNNING, RunInfo, RunLogger, hparam_value

STATUS = "rarespur_status"  # RUNNING, FINISHED or FAILED; TensorBoard reads only event files


class TensorBoardLogger(RunLogger):
    def __init__(self, save_dir: str | Path) -> None:
        self.root = Path(save_dir).expanduser()
        self.folder: Path | None = None
        self.info: RunInfo | None = None
        self.writer = None

    def start(self, info: RunInfo) -> bool:
        self.folder, self.info = self.root / info.key, info
        status = self.folder / STATUS
        if status.exists() and status.read_text().strip() == FINISHED:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(status, RUNNING)
        return True

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        if not rows:
            return
        if self.writer is None:
            # events of an earlier attempt from this epoch on are dropped: a resumed run logs each epoch once
            self.writer = _summary_writer(self.folder, purge_step=int(rows[0]["epoch"]))
        for row in rows:
            for name, value in row.items():
                if name != "epoch":
                    self.writer.add_scalar(name, value, int(row["epoch"]))
        self.writer.flush()

    def finish(self, metrics: dict[str, float], artifacts: list[Path], run_path: Path) -> None:
        writer = self.writer if self.writer is not None else _summary_writer(self.folder)
        hparams = {name: hparam_value(value) for name, value in self.info.params.items()}
        hparams.update({f"tag.{name}": value for name, value in self.info.tags.items()})
        # the session is written into the run's own folder (run_name "."), so one folder is one run of the grid
        writer.add_hparams(hparams, {f"final/{name}": value for name, value in metrics.items()}, run_name=".")
        writer.close()
        self.writer = None
        write_atomic(self.folder / STATUS, FINISHED)

    def fail(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        write_atomic(self.folder / STATUS, FAILED)


def _summary_writer(folder: Path, purge_step: int | None = None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)
