"""Resolve the region's container images with the sagemaker SDK, at configuration time.

    python -m infra.images --region us-east-1 [--write]

prints (or writes into every stage of .chalice/config.json) TRAINING_IMAGE,
INFERENCE_IMAGE and DEBUGGER_RULES_IMAGE: the versions of infra/frameworks.py, for the
region. The Lambda only reads them: the SDK is 300 MB and never ships in the zip.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from infra.frameworks import IMAGES

CONFIG = Path(__file__).resolve().parent.parent / ".chalice" / "config.json"


def resolve(region: str, instance_type: str = "ml.m5.xlarge") -> dict[str, str]:
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker import image_uris
    from sagemaker.debugger import get_rule_container_image_uri

    def pytorch(scope: str) -> str:
        image = IMAGES[scope]
        return image_uris.retrieve("pytorch", region=region, version=image.framework_version,
                                   py_version=image.py_version, instance_type=instance_type, image_scope=scope)

    return {"TRAINING_IMAGE": pytorch("training"), "INFERENCE_IMAGE": pytorch("inference"),
            "DEBUGGER_RULES_IMAGE": get_rule_container_image_uri("rules", region)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--write", action="store_true", help="write the images into every stage of config.json")
    args = parser.parse_args()
    images = resolve(args.region)
    if args.write:
        config = json.loads(CONFIG.read_text())
        for stage in config["stages"].values():
            stage.setdefault("environment_variables", {}).update(images)
        CONFIG.write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps(images, indent=2))


if __name__ == "__main__":
    main()
