"""The stores of this Lambda's configuration, built on demand."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings, settings
from .store.arrivals import Arrivals
from .store.predictions import Predictions
from .store.registry import Registry
from .store.runs import Runs


@dataclass(frozen=True)
class Stores:
    arrivals: Arrivals
    runs: Runs
    registry: Registry
    predictions: Predictions


def stores(config: Settings | None = None) -> Stores:
    config = config or settings()
    return Stores(arrivals=Arrivals(config.pipeline_table), runs=Runs(config.pipeline_table),
                  registry=Registry(config.pipeline_table), predictions=Predictions(config.predictions_table))
