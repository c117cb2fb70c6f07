"""Hydra entry point: one job = one experiment on one config.

python run.py                                  # the embedded digits default
python run.py dataset=mnist data.root=../shared/data pattern=s3 poison.count=100
python run.py -m pattern=s1,s3 poison.count=0,10
python run.py --help                           # config groups, common keys, examples
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rarespur.errors import UserError
from rarespur.launch.fast_help import speed_up_help
from rarespur.launch.process_exit import exit_now

FULL_ERROR_HINT = "(HYDRA_FULL_ERROR=1 shows the traceback)"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # Imported here, not above: they load torch and every experiment (seconds), which --help, --cfg,
    # --info, tab completion and Hydra's plugin discovery never need.
    from rarespur.launch.pack_job import run_pack_file
    from rarespur.launch.runner import run_job

    members = OmegaConf.select(cfg, "pack.members")
    try:
        if members:  # a pack of the sweep's jobs (pack.size > 1) trained together, or a chain (pack.chain > 1)
            run_pack_file(members)
            return float("nan")
        record = run_job(cfg)
    except UserError as err:
        # The message says what to change; a traceback would only bury it. HYDRA_FULL_ERROR=1 asks for it.
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the other jobs of the sweep go on; Hydra reports it
            raise CompactHydraException(f"error: {err}") from err
        print(f"error: {err}\n{FULL_ERROR_HINT}", file=sys.stderr)
        sys.exit(1)
    return record.get("spurious_score", float("nan"))


if __name__ == "__main__":
    speed_up_help()
    main()
    exit_now()  # done: skip the interpreter's teardown (rarespur/launch/process_exit.py)
