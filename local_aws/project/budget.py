"""The small training budget the end-to-end tests and the chaos run give the stack (`--set`)."""

from __future__ import annotations

import json

# A budget that trains a real ResNet-18 on a third of the digits (>0.9 test accuracy) in well
# under a minute per job on 2 idle cores: one tuning trial, then the final job, 2 epochs of
# Adam with small batches (BatchNorm's running statistics need the steps).
SMALL_BUDGET = {
    "MAX_TRAINING_JOBS": "1",
    "MAX_PARALLEL_JOBS": "1",
    # Longer than the training queue's batching window (20 s), so a burst is not cut in two;
    # an upload ends with a _COMMIT marker, which starts the run at once.
    "QUIET_WINDOW_SECONDS": "30",
    "MIN_IMAGES": "20",
    "STATIC_HYPERPARAMETERS": json.dumps({
        "arch": "resnet18", "optimizer": "adam", "freeze": "none", "pretrained": "none", "image-size": "32",
        "epochs": "2", "patience": "2", "hflip-prob": "0", "workers": "0", "batch-size": "16"}),
    "TUNING_RANGES": json.dumps({"lr": {"type": "continuous", "min": 0.0015, "max": 0.0025,
                                        "scaling": "Logarithmic"}}),
}
SCHEDULE_SECONDS = 3  # the schedule's handlers this often instead of every minute
