"""``experiment=detect`` (docs/science.md#detection-and-xbl): find a trained model's shortcut without being told it.

Builds on the finished ``train`` run of the same config. Scans ``detect.num_images`` test images
(which carry no pattern; ``detect.scan_images``: spread evenly over the classes, or the first ones)
with the perturbation bank of :mod:`rarespur.methods.detection.scan` and the triggers
reverse-engineered from the model (:mod:`rarespur.methods.detection.triggers`, no template), weighs
each finding against the training data (:mod:`rarespur.methods.detection.evidence`), ranks the
training images that carry the top finding, and grades all of it against the planted truth, which
the run knows from its config but the detector is never given. Tables ``findings`` and ``carriers``, the
per-class ``perturbation_map.png``, and ``detect.*`` fields in the record.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rarespur.config.schema import Field, count, non_negative, positive_int
from rarespur.engine.scoring import to_tensor
from rarespur.errors import ConfigError
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import (
    PoisonedData,
    TrainedParent,
    check_train_config,
    load_data,
    load_trained_parent,
    parent_config,
    training_record,
)
from rarespur.methods.detection.carriers import rank_carriers
from rarespur.methods.detection.evidence import add_evidence
from rarespur.methods.detection.grading import grade
from rarespur.methods.detection.maps import save_perturbation_maps
from rarespur.methods.detection.scan import (
    SCAN_IMAGES,
    ScanSettings,
    finding_mask,
    perturbation_maps,
    rank_findings,
    scan,
    scan_indices,
)
from rarespur.methods.detection.triggers import TriggerSettings, grow_to_copies, trigger_rows
from rarespur.store.atomic import atomic_path
from rarespur.store.run_dir import TABLES, RunDir

log = logging.getLogger(__name__)

OWN_KEYS = ("detect",)
FINDINGS_TABLE, CARRIERS_TABLE = "findings", "carriers"
PERTURBATION_MAP = "perturbation_map.png"  # per class: where a white patch pulls the model
FIELDS = {
    "detect.patch_sizes": Field(int, low=1, many=True, what="positive integers"),
    "detect.patch_values": Field(float, low=0, high=1, many=True),
    "detect.stride": positive_int(),
    "detect.noise_strengths": Field(float, low=0, low_open=True, many=True),
    "detect.content_fractions": Field(float, low=0, high=1, low_open=True, many=True),
    "detect.num_images": positive_int(),
    "detect.scan_images": Field(str, choices=SCAN_IMAGES),
    "detect.z_threshold": non_negative(),
    "detect.min_delta": Field(float, low=0, high=1),
    "detect.min_purity": Field(float, low=0, high=1),
    "detect.alpha": Field(float, low=0, high=1, low_open=True),
    "detect.evidence_z": non_negative(),
    "detect.trigger_steps": count(),
    "detect.trigger_lr": Field(float, low=0, low_open=True),
    "detect.trigger_l1": non_negative(),
    "detect.trigger_mask_threshold": Field(float, low=0, high=1, low_open=True),
    "detect.trigger_regions": positive_int(),
    "detect.trigger_cosine": Field(float, low=-1, high=1),
    "detect.trigger_reach": non_negative(),
    "detect.trigger_tolerance": Field(float, low=0, high=1),
    "detect.map_window": positive_int(),
    "detect.top_k": positive_int(),
    "detect.table_rows": count(),
    "detect.seed": count(),
}


def scan_settings(cfg: dict[str, Any]) -> ScanSettings:
    """The scan's settings from the ``detect`` keys (the YAML holds the defaults a user sees)."""
    d = cfg["detect"]
    return ScanSettings(
        patch_sizes=tuple(d["patch_sizes"]),
        patch_values=tuple(d["patch_values"]),
        stride=d["stride"],
        noise_strengths=tuple(d["noise_strengths"]),
        content_fractions=tuple(d["content_fractions"]),
        z_threshold=d["z_threshold"],
        min_delta=d["min_delta"],
        min_purity=d["min_purity"],
        alpha=d["alpha"],
        evidence_z=d["evidence_z"],
        seed=d["seed"],
    )


def trigger_settings(cfg: dict[str, Any]) -> TriggerSettings:
    """The template-free family's settings from the ``detect.trigger_*`` keys."""
    d = cfg["detect"]
    return TriggerSettings(
        steps=d["trigger_steps"],
        lr=d["trigger_lr"],
        l1=d["trigger_l1"],
        mask_threshold=d["trigger_mask_threshold"],
        regions=d["trigger_regions"],
        cosine=d["trigger_cosine"],
        reach=d["trigger_reach"],
        tolerance=d["trigger_tolerance"],
    )


def check(cfg: dict[str, Any]) -> None:
    """Patches and the map window must fit the images (found before anything is trained)."""
    check_train_config(cfg)
    h, w, _ = load_data(cfg).image_shape
    for key, sizes in (
        ("detect.patch_sizes", cfg["detect"]["patch_sizes"]),
        ("detect.map_window", [cfg["detect"]["map_window"]]),
    ):
        too_big = [s for s in sizes if s > min(h, w)]
        if too_big:
            raise ConfigError(
                f"{key}={too_big[0]} is larger than the {h}x{w} images of {cfg['dataset']['name']}; use sizes <= {min(h, w)}"
            )


def requires(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The train run of the same config (the debias run with parent=debias): the model scanned."""
    return [parent_config(cfg, OWN_KEYS)]


def run(cfg: dict[str, Any], run_dir: RunDir, parents: list[Path]) -> dict[str, Any]:
    """Scan, weigh against the training data, rank carriers, grade; store the tables and the map."""
    parent = load_trained_parent(cfg, parents[0])
    d, data = cfg["detect"], parent.poisoned.data
    chosen = scan_indices(data.test_y, d["num_images"], d["scan_images"])
    x = to_tensor(data.test_x[chosen], parent.device)
    y = torch.from_numpy(data.test_y[chosen]).to(parent.device)
    per_class = np.bincount(data.test_y[chosen], minlength=data.num_classes)
    log.info("scanning %s (parent run %s) on %d test images", cfg["model"]["name"], parents[0].name, len(x))
    started = time.perf_counter()
    ranked = _findings(cfg, parent, x, y)
    scan_seconds = time.perf_counter() - started
    carriers = _carriers(parent, ranked, x, y)
    _store(cfg, run_dir, parent, ranked, carriers, x, y)
    return {
        **_graded(parent.poisoned, ranked, carriers),
        "detect.num_scanned": int(len(x)),
        "detect.scanned_per_class": ",".join(map(str, per_class.tolist())),
        "detect.num_perturbations": len({(r["family"], r["value"], r["top"], r["left"]) for r in ranked}),
        "detect.scan_seconds": scan_seconds,
        "parent.spurious_score": parent.record.get("spurious_score"),
        "parent.test_acc": parent.record.get("test_acc"),
        "parent.p_value": parent.record.get("p_value"),
        "parent_run_id": parents[0].name,
        **training_record(None, parent.poisoned.indices, parent.device),
    }


def _findings(cfg: dict[str, Any], parent: TrainedParent, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """The perturbations the model depends on, weighed against the training data, ranked (flagged first)."""
    settings, triggers = scan_settings(cfg), trigger_settings(cfg)
    data, model, device = parent.poisoned.data, parent.model, parent.device
    train_x, train_y = to_tensor(parent.poisoned.train_x, device), torch.from_numpy(data.train_y).to(device)
    rows = scan(model, x, y, data.num_classes, settings)
    rows += trigger_rows(model, x, y, data.num_classes, triggers)
    grow_to_copies(rows, model, x, y, train_x, triggers)
    add_evidence(rows, train_x, train_y, data.num_classes, settings.evidence_z, triggers)
    ranked = rank_findings(rows, settings)
    top = next((row for row in ranked if row["flagged"]), None)
    log.info(
        "%d findings flagged; top: %s",
        sum(row["flagged"] for row in ranked),
        f"{top['family']} at ({top['top']}, {top['left']}) for class {top['class']}, delta {top['delta']:.3f}"
        if top
        else "none",
    )
    return ranked


def _carriers(parent: TrainedParent, ranked: list[dict], x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """The training images that carry the top finding, most affected first (none without a finding)."""
    top = next((row for row in ranked if row["flagged"]), None)
    if top is None:
        return []
    train_x = to_tensor(parent.poisoned.train_x, parent.device)
    train_y = torch.from_numpy(parent.poisoned.data.train_y).to(parent.device)
    return rank_carriers(parent.model, train_x, train_y, top, x[y != top["class"]][:32])


def _store(
    cfg: dict[str, Any],
    run_dir: RunDir,
    parent: TrainedParent,
    ranked: list[dict],
    carriers: list[dict],
    x: torch.Tensor,
    y: torch.Tensor,
) -> None:
    """The findings and carriers tables, and the per-class perturbation map with the top finding drawn on."""
    d, poisoned = cfg["detect"], parent.poisoned
    flagged = [row for row in ranked if row["flagged"]]
    run_dir.write_table(FINDINGS_TABLE, ranked[: len(flagged) + d["table_rows"]])
    poisoned_set = set(poisoned.indices.tolist())
    if carriers:
        run_dir.write_table(
            CARRIERS_TABLE, [{**c, "poisoned": c["index"] in poisoned_set} for c in carriers[: d["top_k"]]]
        )
    maps = perturbation_maps(parent.model, x, y, poisoned.data.num_classes, d["map_window"])
    title = (
        f"{cfg['model']['name']} on {cfg['dataset']['name']}: {poisoned.describe()} with {poisoned.pattern.name} "
        f"(unknown to the scan); {len(flagged)} flagged"
    )
    with atomic_path(run_dir.file(PERTURBATION_MAP)) as tmp:
        save_perturbation_maps(
            maps, tmp, poisoned.data.classes, d["map_window"], flagged[0] if flagged else None, title
        )


def _graded(poisoned: PoisonedData, ranked: list[dict], carriers: list[dict]) -> dict[str, Any]:
    """``detect.*`` metrics: the result against the planted truth, and what the top finding is."""
    h, w, _ = poisoned.data.image_shape
    metrics = grade(
        ranked,
        poisoned.pattern.support(poisoned.data.image_shape),
        poisoned.targets,
        carriers,
        poisoned.indices,
        lambda row: finding_mask(ranked, row, h, w),
    )
    record = {f"detect.{k}": v for k, v in metrics.items()}
    top = next((row for row in ranked if row["flagged"]), None)
    if top is not None:
        record.update(
            {
                "detect.top_kind": top["kind"],
                "detect.top_family": top["family"],
                "detect.top_value": top["value"],
                "detect.top_class": top["class"],
                "detect.top_delta": top["delta"],
                "detect.top_z": top["z"],
                "detect.top_region": f"{top['top']},{top['left']},{top['bottom']},{top['right']}",
                "detect.top_carriers": top["carriers"],
                "detect.top_purity": top["purity"],
                "detect.top_mask_pixels": int(finding_mask(ranked, top, h, w).sum()),
            }
        )
    return record


SUMMARY_KEYS = tuple(
    f"detect.{key}" for key in ("num_flagged", "top_family", "top_class", "top_delta", "hit_at_1", "precision_at_n")
)
EXPERIMENT = Experiment(
    run,
    check,
    requires,
    FIELDS,
    summary_keys=SUMMARY_KEYS,
    debiased_parent=True,
    artifacts=(PERTURBATION_MAP, f"{TABLES}/{FINDINGS_TABLE}.csv"),
)
