"""One launcher job that trains a pack of sweep jobs together (or runs a chain of them in turn): from a pack
file to committed records.

Each member ends exactly as if it had run alone through :func:`rarespur.launch.runner.run_job`:
the same run directory, record (plus ``packed_with.pack`` and ``packed_with.size``)
and done marker. Members already done are taken as stored; a member another process is
working on is left to it and waited for at the end; members that would train the same
weights (clean baselines scored with different patterns) are trained once, the others
reuse that model as unpacked runs do. A member that fails (a bad config, a diverged
loss) fails alone: its error.txt is written, the others are committed, and the job
ends with an error naming the failed ones, so the sweep reports it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from rarespur.errors import UserError
from rarespur.experiments import resolve_job
from rarespur.experiments.experiment import Experiment
from rarespur.experiments.steps import data_fingerprint_of
from rarespur.launch.pack_plan import read_pack_file
from rarespur.launch.provenance import where_it_ran
from rarespur.launch.runner import commit, match_threads_to_allocation, run_job, stored
from rarespur.store.run_dir import Claim, RunDir, find_trained, training_key
from rarespur.tracking.loggers import logger_settings
from rarespur.tracking.session import tracked

log = logging.getLogger(__name__)


class PackFailed(UserError):
    """Some models of a pack failed; the others were committed."""


def run_pack_file(path: str | Path) -> list[dict[str, Any]]:
    """Run the pack (or chain) of `path` (written by :func:`rarespur.launch.pack_plan.plan_packs`); returns
    the records."""
    name, members, chained = read_pack_file(path)
    match_threads_to_allocation()
    where_it_ran()  # git runs now, as the pack starts (cached), so ran_on.commit is the code that runs
    records: list[dict[str, Any]] = []
    failed: list[str] = []
    if chained:  # one after another, each exactly as alone: the process's start-up is what they share
        records = _run_alone(members, failed)
        if failed:
            raise PackFailed(f"{len(failed)} of the {len(members)} jobs of {name} failed: " + "; ".join(failed))
        return records
    to_train: list[tuple[dict[str, Any], RunDir]] = []
    experiment: Experiment | None = None  # the pack's (packed jobs share their experiment)
    reusing: list[dict[str, Any]] = []  # their model is trained already: scored alone, before the pack trains
    same_weights: dict[str, list[dict[str, Any]]] = {}  # by training key: scored once this pack trained them
    afterwards: list[dict[str, Any]] = []  # another process is at them: waited for at the end
    for member in members:
        resolved, experiment = resolve_job(member)
        run = RunDir(resolved["results_dir"], resolved)
        if run.done and run.damage() is None:
            records.append(stored(run, resolved, experiment))
            continue
        try:
            logger_settings(resolved)  # as a job alone: a missing logger package fails before the run directory
            experiment.check(resolved)
        except UserError as err:
            failed.append(f"{run.key}: {err}")
            continue
        weights = training_key(resolved)
        if weights in same_weights:
            same_weights[weights].append(resolved)
        elif find_trained(resolved["results_dir"], resolved, data_fingerprint_of(resolved)) is not None:
            reusing.append(resolved)
        else:
            same_weights[weights] = []
            to_train.append((resolved, run))
    records += _run_alone(reusing, failed)
    with contextlib.ExitStack() as held:
        mine: list[Claim] = []
        for resolved, run in to_train:
            claim = held.enter_context(run.claim(resolved, wait=False))
            if not claim.held:
                afterwards.append(resolved)
            elif claim.done:  # finished by another process meanwhile
                records.append(stored(run, resolved, experiment))
            else:
                mine.append(claim)
        if len(mine) == 1:  # nothing to pack with: the job as it would run alone, once its claim is let go
            afterwards.insert(0, mine.pop().resolved)
        if mine:
            records += _train(name, experiment, mine, same_weights, failed)
    records += _run_alone(afterwards + [cfg for group in same_weights.values() for cfg in group], failed)
    if failed:
        raise PackFailed(f"{len(failed)} of the {len(members)} jobs of {name} failed: " + "; ".join(failed))
    return records


def _run_alone(cfgs: list[dict[str, Any]], failed: list[str]) -> list[dict[str, Any]]:
    """Run configs as single jobs (they reuse a trained model, or wait for another process); failures to
    `failed`."""
    records = []
    for resolved in cfgs:
        try:
            records.append(run_job(resolved))
        except Exception as err:  # its error.txt is written; the pack's other jobs go on
            failed.append(f"{RunDir(resolved['results_dir'], resolved).key}: {err}")
    return records


def _train(
    name: str,
    experiment: Experiment,
    mine: list[Claim],
    same_weights: dict[str, list[dict[str, Any]]],
    failed: list[str],
) -> list[dict[str, Any]]:
    """Train the members this process has claimed as one pack and commit each; their failures go to `failed`.

    Right after a model is committed, the configs in `same_weights` that train the same weights
    (clean baselines scored with other patterns or seeds) are scored with it; clean models come
    first, so every poisoned run of the pack finds its baseline. An error of the pack as a whole fails
    every claim it leaves unsettled (:meth:`rarespur.store.run_dir.RunDir.claim`)."""
    started = time.perf_counter()
    cfgs = [claim.resolved for claim in mine]
    records: list[dict[str, Any]] = []
    fingerprint = data_fingerprint_of(cfgs[0])
    with contextlib.ExitStack() as held:  # each model its own tracking run; an error of the pack fails them all
        tracking = [held.enter_context(tracked(claim.run, claim.resolved, name)) for claim in mine]

        def finish(i: int, result: dict[str, Any] | Exception) -> None:
            key = mine[i].run.key
            if isinstance(result, Exception):
                mine[i].fail("".join(traceback.format_exception(result)))
                tracking[i].fail()
                failed.append(f"{key}: {result}")
                for other in same_weights.pop(training_key(cfgs[i]), []):  # the same model: not trained again
                    failed.append(f"{RunDir('', other).key}: not run, the model it shares with run {key} failed")
                return
            metrics = {**result, "packed_with.pack": name, "packed_with.size": len(mine)}
            records.append(commit(mine[i], experiment, metrics, fingerprint, time.perf_counter() - started))
            tracking[i].finish(records[-1], mine[i].run.path)
            records.extend(_run_alone(same_weights.pop(training_key(cfgs[i]), []), failed))

        experiment.run_pack(cfgs, [claim.run for claim in mine], finish)
    return records
