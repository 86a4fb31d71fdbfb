"""The stores of this Lambda's configuration, built once per container."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings, settings
from .store.accuracy import Accuracy
from .store.arrivals import Arrivals
from .store.drift import Drift
from .store.predictions import Predictions
from .store.registry import Registry
from .store.runs import Runs


@dataclass(frozen=True)
class Stores:
    arrivals: Arrivals
    runs: Runs
    registry: Registry
    predictions: Predictions
    accuracy: Accuracy
    drift: Drift


_built: tuple[Settings, Stores] | None = None


def stores() -> Stores:
    """The stores for the current settings (built once: boto3 Table objects are slow to make)."""
    global _built
    config = settings()
    if _built is None or _built[0] is not config:
        _built = (config, Stores(arrivals=Arrivals(config.pipeline_table), runs=Runs(config.pipeline_table),
                                 registry=Registry(config.pipeline_table),
                                 predictions=Predictions(config.predictions_table, config.pipeline_table),
                                 accuracy=Accuracy(config.pipeline_table),
                                 drift=Drift(config.pipeline_table)))
    return _built[1]
