"""edgeds on Ray Data (`pip install 'edgeds[ray]'`): `Predictor` for `Dataset.map_batches`, and
the driver of `edgeds infer --ray` (job.py).

Imports are absolute: inside this package `ray` is Ray itself, never edgeds.ray. Importing
edgeds.ray needs no Ray; constructing a Predictor inside a Ray actor, or running a job, does.
"""

from edgeds.ray.predictor import Predictor

__all__ = ["Predictor"]
