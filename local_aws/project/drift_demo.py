"""The demo's drift step (#17): shifted images in, drift seen, a person's labels, a model that recovers.

Run by `make demo` after the endpoint update, through the public HTTP API only:

1. ordinary held-out digits, and the live version's drift statistics on them (GET /drift);
2. a stream of shifted digits (inverted: white on black becomes black on white), with the drift
   check's statistics as they cross their thresholds and the event it records for the live version;
3. the review queue filling (low-confidence predictions, and a raised sample while drifting);
4. a scripted reviewer labelling every shifted image that waits (POST /review/{name}): the labels
   are copied into training-data/ and retraining starts through the ordinary burst path;
5. the run that follows, then more shifted images, never seen in training, classified by the new
   version: their accuracy against the old version's on the shifted stream, and both versions'
   live accuracy from the sampled labels (GET /models).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps

from .launcher import StackProcess


class Demo(Protocol):
    """What the step uses of the demo (local_aws/project/demo.py: Demo), which runs it."""

    stack: StackProcess
    out: Path

    def say(self, message: str) -> None: ...
    def mark(self, name: str) -> None: ...
    def runs(self) -> list[dict[str, Any]]: ...
    def follow_run(self, known: set[str], timeout: float) -> dict[str, Any]: ...
    def summarise_run(self, run: dict[str, Any]) -> dict[str, Any]: ...
    def classify(self, files: list[Path], prefix: str, timeout: float = 300) -> dict[str, dict[str, Any]]: ...
    def accuracy(self, answers: dict[str, dict[str, Any]]) -> tuple[float, int]: ...

SHIFT = "inverted"
# The name prefixes: ordinary held-out digits, the shifted stream, the shifted held-out digits.
SAME, STREAM, RECOVERY = "same-", "shifted-", "recovery-"
DETECTION_IMAGES = 300  # enough to fill the drift window twice over (DRIFT_WINDOW_IMAGES, demo_budget)
CHUNK = 50


def shifted_copies(files: list[Path], out: Path) -> list[Path]:
    """Each digit inverted, under out/<label>/<name> (the label stays in the path, as in the digits)."""
    copies = []
    for path in files:
        target = out / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.invert(Image.open(path).convert("L")).save(target)
        copies.append(target)
    return copies


def true_label(name: str) -> str:
    """`<prefix>-<label>-<file>` as Demo.classify names them."""
    return name.split("-")[1]


class DriftStep:
    def __init__(self, demo: Demo) -> None:
        self.demo, self.api = demo, demo.stack.api

    def drift(self) -> dict[str, Any]:
        status, body = self.api("/drift?limit=20")
        return body if status == 200 else {}

    def live_version(self) -> str | None:
        status, body = self.api("/models/live")
        return body.get("model_version") if status == 200 else None

    def version_view(self, version: str | None) -> dict[str, Any]:
        return next((v for v in self.drift().get("versions", []) if v["model_version"] == version), {})

    def events_of(self, version: str | None) -> list[dict[str, Any]]:
        return [e for e in self.drift().get("items", []) if e["model_version"] == version]

    def wait_for_check(self, version: str | None, images: int, timeout: float = 180) -> dict[str, Any]:
        """The version's drift view once a check has seen at least `images` images in its window."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.version_view(version)
            if (view.get("statistics") or {}).get("images", 0) >= images or time.monotonic() > deadline:
                return view
            time.sleep(2)

    def stream(self, files: list[Path], version: str | None,
               timeout: float = 600) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, int]:
        """Classify the shifted images a chunk at a time, all of them (the review queue fills on);
        the live version's drift event, and how many had been sent when it was first seen."""
        answers: dict[str, dict[str, Any]] = {}
        seen_after = 0
        for start in range(0, len(files), CHUNK):
            answers |= self.demo.classify(files[start:start + CHUNK], STREAM)
            if not seen_after:
                view = self.version_view(version)
                self.demo.say(f"drift check after {len(answers)} shifted images: {view.get('statistics')}")
                seen_after = len(answers) if self.events_of(version) else 0
        deadline = time.monotonic() + timeout
        while not self.events_of(version) and time.monotonic() < deadline:  # the next check decides
            time.sleep(5)
        events = self.events_of(version)
        return answers, (events[-1] if events else None), seen_after or len(answers)

    def waiting(self) -> list[dict[str, Any]]:
        items, cursor = [], None
        while True:
            status, body = self.api("/review?limit=100" + (f"&cursor={cursor}" if cursor else ""))
            if status != 200:
                return items
            items += body["items"]
            cursor = body.get("next")
            if not cursor:
                return items

    def label_waiting(self, prefix: str) -> dict[str, int]:
        """The scripted reviewer: every waiting image of ours gets its true label."""
        counts = {"labelled": 0, "correct": 0, "sampled": 0}
        for item in self.waiting():
            name = item["name"]
            if not name.startswith(prefix):
                continue
            status, answer = self.api(f"/review/{name}", method="POST", body={"label": true_label(name)})
            if status == 200:
                counts["labelled"] += 1
                counts["correct"] += bool(answer.get("correct"))
                counts["sampled"] += bool(answer.get("sampled"))
        return counts

    def live_accuracy(self) -> dict[str, Any]:
        status, body = self.api("/models")
        return {m["model_version"]: m.get("live_accuracy") for m in body.get("items", [])} if status == 200 else {}

    def run(self, pool: list[Path], held_out: list[Path]) -> dict[str, Any]:
        demo = self.demo
        out = demo.out / "shifted"
        # Shuffled: the files sort by label, and the stream must hold every label.
        detection = shifted_copies(random.Random(0).sample(pool, min(DETECTION_IMAGES, len(pool))), out / "stream")
        evaluation = shifted_copies(held_out, out / "held-out")
        version = self.live_version()
        summary: dict[str, Any] = {"shift": SHIFT, "model_version": version}
        # The live version's own window of ordinary digits first: what no drift looks like.
        same = demo.classify(held_out, SAME)
        before = self.wait_for_check(version, min(len(same), self.drift().get("min_images", 0)))
        summary["same_distribution"] = {"sent": len(same), "statistics": before.get("statistics"),
                                        "drifting": before.get("drifting")}
        demo.say(f"drift check of {version} on {len(same)} ordinary held-out digits: {before.get('statistics')} "
                 f"(drifting: {before.get('drifting')})")

        demo.say(f"sending {len(detection)} {SHIFT} digits, {CHUNK} at a time")
        answers, event, seen_after = self.stream(detection, version)
        shifted_accuracy, answered = demo.accuracy(answers)
        demo.mark("drift_detected")
        summary["detection"] = {"sent": answered, "seen_after": seen_after, "accuracy": round(shifted_accuracy, 4),
                                "event": event and {k: event.get(k) for k in ("started_at", "reasons", "statistics")}}
        if event is None:
            demo.say("no drift event: the step ends here")
            return summary
        demo.say(f"drift event for {version}, seen after {seen_after} {SHIFT} digits: {'; '.join(event['reasons'])}; "
                 f"the model's accuracy on them: {shifted_accuracy:.3f}")

        waiting = self.waiting()
        reasons = [item.get("review_reason") for item in waiting]
        summary["review_queue"] = {"waiting": len(waiting), "low_confidence": reasons.count("low-confidence"),
                                   "sampled": sum(bool(item.get("sampled")) for item in waiting)}
        demo.say(f"review queue: {summary['review_queue']}")
        known = {r["run_id"] for r in demo.runs()}
        labelled = self.label_waiting(STREAM)
        summary["reviewer"] = labelled
        demo.say(f"the reviewer labelled {labelled['labelled']} images ({labelled['correct']} the model had right): "
                 "they are training data now, and retraining starts by itself")

        run = demo.follow_run(known, timeout=3600)
        demo.mark("drift_run_ended")
        summary["run"] = demo.summarise_run(run)
        if run["status"] != "DEPLOYED":
            demo.say(f"the retraining ended {run['status']}: {run.get('gate') or run.get('reason')}")
            return summary
        recovered, count = demo.accuracy(demo.classify(evaluation, RECOVERY))
        labelled_after = self.label_waiting(RECOVERY)
        summary["after"] = {"model_version": run.get("model_version"), "answered": count,
                            "accuracy": round(recovered, 4), "reviewer": labelled_after,
                            "live_accuracy": self.live_accuracy()}
        demo.say(f"{run.get('model_version')} on {count} {SHIFT} held-out digits: accuracy {recovered:.3f} "
                 f"(the old model: {shifted_accuracy:.3f} on the stream)")
        demo.say(f"live accuracy per version, from the sampled labels: {summary['after']['live_accuracy']}")
        return summary
