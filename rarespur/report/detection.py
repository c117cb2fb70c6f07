"""Detection and correction (docs/science.md#detection-and-xbl): how often the scan names the planted pattern, and what
XBL removes.

The detection table grades every ``experiment=detect`` run against the planted truth: hit@1, the rank
of the first correct finding, precision@n of the carrier ranking, and the findings flagged (on clean
runs, n = 0, every flagged finding is false). The XBL figure is the deletion figure's before / after /
retrained-from-scratch view of ``experiment=xbl`` runs, one panel per mask (detected, truth).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from rarespur.report.data import ReportData
from rarespur.report.deletion import before_after
from rarespur.report.sections import FigureSpec, Section
from rarespur.report.tables import group_keys, summarize

XBL_STAGES = [("before.", "before XBL"), ("", "after XBL"), ("exact.", "retrained from scratch")]
XBL_COLORS = {"before XBL": "C3", "after XBL": "C0", "retrained from scratch": "C2", "clean baseline": "grey"}
XBL_LINESTYLES = {"after XBL": "--", "clean baseline": ":"}
DETECTION_COLUMNS = [
    "detect.hit_at_1",
    "detect.precision_at_n",
    "detect.first_hit_rank",
    "detect.num_flagged",
    "detect.false_flagged",
    "detect.top_delta",
    "parent.spurious_score",
]


def detect_runs(data: ReportData) -> pd.DataFrame:
    runs = data.experiment("detect")
    return runs.dropna(subset=["detect.num_flagged"]) if "detect.num_flagged" in runs else pd.DataFrame()


def xbl_runs(data: ReportData) -> pd.DataFrame:
    runs = data.experiment("xbl")
    return runs.dropna(subset=["spurious_score"]) if "spurious_score" in runs else pd.DataFrame()


def detection_table(data: ReportData) -> pd.DataFrame:
    """Per pattern and n (and every other setting that varies): the detector's grades, averaged over seeds."""
    runs = detect_runs(data)
    if runs.empty:
        return pd.DataFrame()
    return summarize(runs, group_keys(runs, ("pattern.name", "poison.count")), DETECTION_COLUMNS)


def xbl(data: ReportData) -> Figure | None:
    """Score (top) and accuracy (bottom) vs n before and after XBL, and retrained from scratch, per mask."""
    return before_after(
        xbl_runs(data),
        "Explanation-based learning: before, after, and retrained from scratch",
        XBL_STAGES,
        XBL_COLORS,
        XBL_LINESTYLES,
    )


SECTION = Section(
    order=42,
    figures=(
        FigureSpec(
            "xbl",
            "Correcting the shortcut with explanation-based learning",
            "Spurious score (top) and clean accuracy (bottom) vs n before XBL, after XBL (penalizing the "
            "attribution inside the detected or the true mask) and retrained from scratch without the "
            "poisoned examples, with the clean baseline score.",
            "xbl runs",
            xbl,
            xbl_runs,
        ),
    ),
    tables={"detection": detection_table},
)
