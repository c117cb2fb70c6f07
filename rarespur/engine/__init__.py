"""The one training loop (alone or packed), its plug-in objectives, checkpoints and the spurious score."""
