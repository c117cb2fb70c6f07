"""Tracking: every run where researchers already browse sweeps (MLflow, TensorBoard, CSV files).

The store stays the truth; a tracking run is a view of one store run, found again by its run key,
so logging is idempotent. Jobs log live through the ``logger`` config group
(:func:`rarespur.tracking.session.tracked`, fed by the loop's epoch callback); ``python -m rarespur
export`` replays a finished store (:mod:`rarespur.tracking.export`) through the same loggers.
"""
