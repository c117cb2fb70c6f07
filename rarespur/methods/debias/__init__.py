"""Debiasing methods (docs/science.md#signal-is-harder): training objectives that resist a bias the data carry.

``debias=<name>`` selects one for ``experiment=debias``; ``conf/debias/<name>.yaml`` names its
:class:`~rarespur.methods.debias.debiaser.Debiaser` subclass in ``_target_``, as regularizers do, so a method is one
module and one YAML on the shared training loop (checkpoints, exact resume, early stopping):
``vanilla`` (plain cross-entropy), ``lff`` (Learning from Failure) and ``sih`` (Signal is Harder).
"""
