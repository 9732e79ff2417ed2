"""Run logs of the training loops: a CSV of metrics (rewritten atomically, so a crash never truncates it),
TensorBoard scalars, and a PNG of the loss curves. Rank 0 only; other ranks never construct a logger.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from titans_dna.data.atomic import atomic_path, atomic_write_text

COLUMNS = ("step", "split", "loss", "ppl", "lr", "seq_len", "tokens", "tokens_per_s", "elapsed_s")


def perplexity(loss: float) -> float:
    """exp(loss) with overflow to inf instead of an exception (early steps of a diverging run)."""
    return math.exp(loss) if loss < 700 else math.inf


class RunLogger:
    """Metrics of one run in ``<run_dir>/metrics.csv`` (columns :data:`COLUMNS`) and ``<run_dir>/tb``.

    On resume, rows past ``resume_step`` are dropped (they belong to the interrupted tail that is about to
    be recomputed), and TensorBoard purges its events past that step likewise.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.rows: list[dict] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as fh:
                self.rows = [row for row in csv.DictReader(fh) if int(row["step"]) <= resume_step]
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step)

    def log(self, step: int, split: str, **values: float) -> None:
        """Record one row (``split`` is "train" or "valid"; values keyed by :data:`COLUMNS`)."""
        row = {"step": step, "split": split, **values}
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric columns {sorted(unknown)}; known are {COLUMNS}")
        self.rows.append(row)
        if self.writer is not None:
            for key in ("loss", "ppl", "lr", "seq_len", "tokens_per_s"):
                if key in values and values[key] is not None:
                    self.writer.add_scalar(f"{split}/{key}", values[key], step)
        self._write_csv()

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, buffer.getvalue())

    def close(self, plot: bool = True) -> None:
        """Flush TensorBoard and draw ``loss_curves.png``."""
        if self.writer is not None:
            self.writer.close()
        if plot and self.rows:
            plot_loss_curves(self.rows, self.run_dir / "loss_curves.png")


def plot_loss_curves(rows: list[dict], path: str | os.PathLike) -> None:
    """Train and validation loss (left) and validation perplexity (right) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.6))
    for split, style in (("train", "-"), ("valid", "o-")):
        points = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == split]
        if points:
            steps, losses = zip(*points, strict=True)
            ax_loss.plot(steps, losses, style, label=split, markersize=3)
            if split == "valid":
                ax_ppl.plot(steps, [perplexity(v) for v in losses], style, color="C1", markersize=3)
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax_loss.legend()
    ax_ppl.set(xlabel="step", ylabel="perplexity", title="validation perplexity")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
