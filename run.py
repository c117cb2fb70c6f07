"""Hydra entry point: one job = one experiment on one config.

    python run.py                                  # the embedded digits default
    python run.py dataset=mnist data.root=../shared/data pattern=s3 poison.count=100
    python run.py -m pattern=s1,s3 poison.count=0,10
"""
import hydra
from omegaconf import DictConfig

from rarespur.runner import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    record = run_job(cfg)
    return record.get("spurious_score", float("nan"))


if __name__ == "__main__":
    main()
