"""From a Hydra config to validated values and a run identity; no torch, so Hydra plugins stay light."""
