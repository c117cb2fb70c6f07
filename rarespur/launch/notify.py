"""``notify=apprise``: one message when a sweep ends, saying what ``python -m rarespur status`` would say.

Hydra calls :meth:`NotifyWhenSweepEnds.on_multirun_end` in the launching process once the sweep has
returned, and rarespur's sweeper calls it when a job failed (Hydra skips it then, and a failed sweep is
the one a researcher most wants to hear about). The message counts the sweep's jobs by state with the
functions of :mod:`rarespur.launch.status` and lists the first failures with their run key and error.

The destination is an apprise URL (``mailto://``, ``slack://``, ``json://``...) read from an environment
variable when the sweep ends, never from the config: such a URL can hold a password, and the config is
saved with every job (``.hydra/config.yaml``, ``multirun.yaml``) while the environment is not.

Hydra builds the callback in every job process too (submitit launchers), and imports it whenever
``notify=apprise`` is chosen, so this module imports only Hydra at load time; the sweep, the status and
apprise load when a message is sent.
"""

from __future__ import annotations

import logging
import os
import platform
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from rarespur.launch.status import Entry

log = logging.getLogger(__name__)

DEFAULT_URL_ENV = "RARESPUR_NOTIFY_URL"
EXTRA = 'pip install -e ".[notify]"'


class NotifyWhenSweepEnds(Callback):
    """Send the sweep's status through apprise to the URL in the environment variable `url_env`, listing at
    most `failures` failed jobs (0: all)."""

    def __init__(self, url_env: str = DEFAULT_URL_ENV, failures: int = 5) -> None:
        self.url_env = url_env
        self.failures = failures
        self._failed_here: dict[tuple[str, ...], str] = {}

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Remember why a job failed when it ran in this process (Hydra's basic launcher): a job refused
        before its run directory exists (an impossible poison.count) leaves nothing for status to read."""
        if job_return.status == JobStatus.FAILED:
            # return_value re-raises a failed job's exception; the exception itself is _return_value
            self._failed_here[tuple(job_return.overrides or ())] = error_line(job_return._return_value)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Send one message; a missing URL, a missing apprise or a failed delivery is a warning, never an error
        of the sweep."""
        if OmegaConf.select(config, "hydra.launcher.wait", default=True) is False:
            log.info(
                "notify: hydra.launcher.wait=false, the jobs run on after this process exits: no message; "
                "SLURM's own mail can tell when the arrays end (docs/cluster.md#a-mail-when-the-arrays-end)"
            )
            return
        url = os.environ.get(self.url_env, "").strip()
        if not url:
            log.warning(
                "notify: $%s is not set, so no message is sent for this sweep; export %s='mailto://...' "
                "(any apprise URL) before launching",
                self.url_env, self.url_env,
            )  # fmt: skip
            return
        try:
            import apprise
        except ImportError:
            log.warning("notify: apprise is not installed, so no message is sent; install it with %s", EXTRA)
            return
        title, body, ok = self.summary(config)
        sender = apprise.Apprise()
        if not sender.add(url):
            log.warning(
                "notify: apprise does not understand the URL in $%s, so no message is sent "
                "(its URL forms: https://github.com/caronc/apprise/wiki)",
                self.url_env,
            )
            return
        kind = apprise.NotifyType.SUCCESS if ok else apprise.NotifyType.FAILURE
        try:
            sent = sender.notify(body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT)
        except Exception as err:  # a plugin's bug must not fail the sweep; its message may hold the URL
            log.warning("notify: sending to the URL in $%s failed (%s)", self.url_env, type(err).__name__)
            return
        if sent:
            log.info("notify: sent %r to the URL in $%s", title, self.url_env)
        else:
            log.warning("notify: sending to the URL in $%s failed (apprise's log above says why)", self.url_env)

    def summary(self, config: DictConfig) -> tuple[str, str, bool]:
        """(title, body, whether every job is done) for the sweep of the multirun config `config`, with its jobs
        expanded as the sweeper launched them and their results_dir taken from the launch directory."""
        from hydra.core.global_hydra import GlobalHydra

        from rarespur.launch.status import survey
        from rarespur.launch.sweep import Sweep

        sweep = Sweep.of_loaded(GlobalHydra.instance().config_loader(), config)
        try:
            jobs = list(sweep.jobs())
        except ValueError as err:  # a job whose config is invalid: status cannot list this sweep either
            return "rarespur sweep ended: its status cannot be read", error_line(err), False
        failed_here = {
            job.run.path: self._failed_here[job.overrides] for job in jobs if job.overrides in self._failed_here
        }
        entries = survey(jobs[0].run.path.parent if jobs else ".", jobs)
        return message(entries, failed_here, self.failures, str(config.hydra.sweep.dir))


def message(
    entries: Sequence[Entry], failed_here: Mapping[Path, str], limit: int, sweep_dir: str
) -> tuple[str, str, bool]:
    """(title, body, whether every job is done): the counts of ``status``'s table, its failed runs with the
    last line of their error.txt, and the missing ones that failed in this launch (`failed_here`: their run
    directory and error) with that error; at most `limit` of each (0: all)."""
    from rarespur.launch.status import DONE_STATE, FAILED, MISSING, STATES, describe, table
    from rarespur.store.run_dir import ERROR

    counts = Counter(entry.state for entry in entries)
    shown = ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
    title = f"rarespur sweep ended: {shown or 'no jobs'} ({len(entries)} jobs)"
    roots = sorted({str(entry.path.parent) for entry in entries})
    lines = [f"{len(entries)} jobs of the sweep in {', '.join(roots) or '-'}, launched on {platform.node()}"]
    lines += [table(entries), f"logs: {sweep_dir}"]
    labels = describe(entries)
    failed = [(e, last_line(e.path / ERROR)) for e in entries if e.state == FAILED]
    refused = [(e, failed_here[e.path]) for e in entries if e.state == MISSING and e.path in failed_here]
    sections = {
        f"failed ({len(failed)}):": failed,
        f"missing ({len(refused)}), failed in this launch before making a run directory:": refused,
    }
    for heading, chosen in sections.items():
        if not chosen:
            continue
        lines.append(heading)
        for entry, error in chosen[: limit or None]:
            lines.append(f"  {entry.path.name}  {labels[entry.path]}".rstrip())
            lines.append(f"    | {error}")
        if limit and len(chosen) > limit:
            lines.append(f"  ... and {len(chosen) - limit} more")
    return title, "\n".join(lines), counts[DONE_STATE] == len(entries)


def error_line(err: BaseException) -> str:
    """The first line of an exception's message; rarespur's own errors reach Hydra as a CompactHydraException
    whose message is the whole story ("error: poison.count=1000 is larger than ..."), others get their type."""
    text = next((line for line in str(err).splitlines() if line.strip()), "")
    if isinstance(err, CompactHydraException):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def last_line(path: Path) -> str:
    """The last non-empty line of a traceback file: the exception and its message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name} gone)"
    return next((line for line in reversed(text.splitlines()) if line.strip()), "(empty)")
