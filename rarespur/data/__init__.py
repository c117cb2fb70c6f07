"""Datasets as tensors-to-be, the patterns planted in them and which images get them (bit-compatible with the original)."""
