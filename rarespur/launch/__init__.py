"""Running jobs: one job with its parents, sweeps and their packs, and the status of a store."""
