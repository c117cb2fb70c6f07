"""Leave a finished ``run.py`` process at once, without the interpreter's teardown.

With torch and its compiler loaded, Python's shutdown (collecting every module, one by one) takes most of a
second (benchmarks/bench_job.py), paid by every ``python run.py`` process. (SLURM and local-pool tasks run in
submitit's own process, which writes its result after the job returns and still pays it.) A finished job needs none of it: its record is committed and its tracking runs ended, and the exit
handlers registered with :mod:`atexit` (logging's flush, multiprocessing's joins, torch's) still run here.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_now(code: int = 0) -> NoReturn:
    """Run the exit handlers, flush the standard streams, and end the process with `code`."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken (a pipe whose reader left): nothing left to say
            pass
    os._exit(code)
