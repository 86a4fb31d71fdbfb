"""The endpoint's inference handler, under SageMaker's inference contract.

SageMaker's PyTorch serving container (and `local_aws.endpoint_host`) imports this file
from the artefact's `code/` directory and calls, per worker and per request:

    model = model_fn(model_dir)                               once per worker
    request = input_fn(body, content_type[, context])         decode and check
    prediction = predict_fn(request, model)                   preprocess, batched forward
    body, content_type = output_fn(prediction, accept)        top-k JSON

A host that batches concurrent requests (local_aws.endpoint_host) may call
`request = prepare_fn(request, model)` on the request's own thread first: predict_fn's
preprocessing, moved off the one thread that runs the model. SageMaker's container does not.

Request bodies: an accepted image (`training.image_contract`: JPEG, PNG, GIF's first
frame, BMP, WebP) as its own `image/...` type or `application/x-image` (the format is
sniffed from the magic bytes either way), or `application/json` as
`{"image": "<base64>"}` or `{"images": ["<base64>", ...]}`, with an optional `"top_k"`.
k may also come from the `X-Amzn-SageMaker-Custom-Attributes: top_k=3` header; the body
wins; the default is DEFAULT_TOP_K, capped at the number of classes.

Answer (the Lambda side parses exactly this):

    {"model_version": str, "engine": str, "num_classes": int,
     "predictions": [[{"label": str, "probability": float}, ...top k...], ...per image],
     "embeddings": [[float, ...EMBEDDING_DIMS...], ...per image]}        only when asked for and known

`embeddings` (for drift detection, training/drift.py) is each image's embedding summary: its
penultimate-layer features projected on the test split's principal components
(training/embedding.py). Ask for it with the custom attribute `embeddings=1`
(`X-Amzn-SageMaker-Custom-Attributes: top_k=3,embeddings=1`) or `"embeddings": true` in a JSON
body (the body wins); not asked, the answer is as above without it. It comes from the same
forward pass as the logits, on either engine, when the artefact has the projection
(`embedding.pt`, written by the final job); a model without one answers without the field
(and logs it, once per worker and version).

`engine` says what computed it: the artefact's optimised model (`model.onnx`, written by the
training job only when it agrees with the eager model), e.g. "openvino-int8", when the
artefact has one and a runtime of training/onnx_engine.py runs it here (OpenVINO, else ONNX
Runtime), else "pytorch-eager" (`model.pth`). Both take the same preprocessed batch and give
logits of the same shape: only the forward differs. `model_version` is the artefact's either way.

A bad request raises RequestError with an HTTP status (400, 406, 413, 415) and a
message (the contract's own for what is not an accepted image; the Lambda stores it as
the FAILED reason). Where SageMaker's inference toolkit is installed, RequestError is one
of its BaseInferenceToolkitError, so the real container answers with that status too.

Decoding and preprocessing are training's own (`training.presets`): the eval preset is
rebuilt from the artefact's `preprocessing.json`, so train and serve tensors are equal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from training.drift import EMBEDDING_ATTRIBUTE
from training.embedding import EMBEDDING_FILE, EmbeddingClassifier, Projection
from training.image_contract import MAX_IMAGES_PER_REQUEST, MIME_TYPES
from training.model import ModelSpec, build_model
from training.onnx_engine import EAGER_ENGINE, OPTIMISED_MODEL, EngineUnavailable, OnnxClassifier
from training.presets import (
    ClassificationPresetEval,
    ImageDecodeError,
    ImageTooLargeError,
    decode_rgb,
)

try:  # inside SageMaker's serving containers
    from sagemaker_inference.errors import BaseInferenceToolkitError as _StatusError
except ImportError:  # the repository and the local endpoint host

    class _StatusError(Exception):  # type: ignore[no-redef]
        """The toolkit's shape: an HTTP status code, a message and a reason phrase."""

        def __init__(self, status_code: int, message: str, phrase: str):
            super().__init__(status_code, message, phrase)
            self.status_code, self.message, self.phrase = status_code, message, phrase


logger = logging.getLogger(__name__)

IMAGE_TYPES = (*MIME_TYPES, "application/x-image")
JSON_TYPE = "application/json"
ACCEPTED_TYPES = (*IMAGE_TYPES, JSON_TYPE)
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
DEFAULT_TOP_K = 5
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's cap on a real-time invocation payload


class RequestError(_StatusError):
    """A request the endpoint cannot answer; `status` is the HTTP status to send."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message, message)

    @property
    def status(self) -> int:
        return self.status_code

    def __str__(self) -> str:
        return self.message


# A preprocessed batch (N, 3, S, S) to logits (N, classes), or to (logits, summaries (N, EMBEDDING_DIMS)).
Forward = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LoadedModel:
    """What model_fn returns: the forward pass and everything needed to answer with it.

    `module` is the eager model, None when the optimised one serves (it is then not loaded).
    `embeddings`: the forward gives embedding summaries beside the logits."""

    module: torch.nn.Module | None
    classes: list[str]
    preset: ClassificationPresetEval
    version: str
    device: torch.device
    forward: Forward
    engine: str = EAGER_ENGINE
    embeddings: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class InferenceRequest:
    """Decoded uint8 RGB images (3, H, W), the k asked for (None: the default), and whether the
    embedding summaries are asked for."""

    images: list[torch.Tensor]
    top_k: int | None = None
    embeddings: bool = False
    # The images through the eval transform, stacked (N, 3, crop, crop), once prepare_fn has run.
    batch: torch.Tensor | None = None


@dataclass(frozen=True)
class Prediction:
    """Class probabilities (N, num_classes), on the CPU, for N images; their embedding summaries
    (N, EMBEDDING_DIMS) when asked for and the model gives them, else None (not in the answer)."""

    probabilities: torch.Tensor
    classes: list[str]
    model_version: str
    top_k: int | None = None
    engine: str = EAGER_ENGINE
    embeddings: torch.Tensor | None = None


# --- model_fn -------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _model_version(model_dir: Path) -> str:
    metadata_path = model_dir / "metadata.json"
    metadata = _read_json(metadata_path) if metadata_path.exists() else {}
    if metadata.get("version"):
        return str(metadata["version"])
    # No recorded version: the weights' own hash still tells two models apart.
    return "sha256-" + hashlib.sha256((model_dir / "model.pth").read_bytes()).hexdigest()[:16]


def _optimised(model_dir: Path, device: torch.device) -> OnnxClassifier | None:
    """The artefact's optimised model, when it has one and it runs here; else None (eager serves).

    The one place the engine is chosen. On a GPU the eager model serves: the optimised model
    was built and measured for CPUs (int8 on CPU kernels)."""
    path = model_dir / OPTIMISED_MODEL
    if not path.exists() or device.type != "cpu":
        return None
    try:
        return OnnxClassifier(path, torch.get_num_threads())
    except EngineUnavailable as error:
        logger.warning("optimised model not served, falling back to eager PyTorch: %s", error)
        return None


def _eager(model_dir: Path, spec: ModelSpec, device: torch.device, projection: Projection | None) -> torch.nn.Module:
    """The weights (weights_only), answering the embedding summaries too when there is a projection."""
    state_dict = torch.load(model_dir / "model.pth", map_location="cpu", weights_only=True)
    module = build_model(spec)
    module.load_state_dict(state_dict)
    if projection is not None:
        module = EmbeddingClassifier(module, projection)
    return module.eval().to(device)


def _projection(model_dir: Path) -> Projection | None:
    path = model_dir / EMBEDDING_FILE
    return Projection.load(path) if path.exists() else None


def model_fn(model_dir: str | Path) -> LoadedModel:
    """Load the optimised model when the artefact has one that runs here, else the weights
    (weights_only); classes and preprocessing; warm up."""
    model_dir = Path(model_dir)
    spec = ModelSpec.from_dict(_read_json(model_dir / "model.json"))
    classes = [str(name) for name in _read_json(model_dir / "classes.json")]
    if len(classes) != spec.num_classes:
        raise ValueError(f"classes.json names {len(classes)} classes, model.json says {spec.num_classes}")
    preset = ClassificationPresetEval.from_dict(_read_json(model_dir / "preprocessing.json"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    version = _model_version(model_dir)
    optimised = _optimised(model_dir, device)
    model = None
    if optimised is not None:
        model = LoadedModel(None, classes, preset, version, device, optimised, optimised.engine, optimised.embeddings)
        try:
            _warm_up(model)
        except Exception as error:  # noqa: BLE001 - a model the runtime loads but cannot run: eager serves
            logger.warning("optimised model failed its warm-up, falling back to eager PyTorch: %r", error)
            model = None
    if model is None:
        projection = _projection(model_dir)
        module = _eager(model_dir, spec, device, projection)
        model = LoadedModel(module, classes, preset, version, device, module, EAGER_ENGINE, projection is not None)
        _warm_up(model)
    # Logged before /ping answers: which engine this worker serves.
    logger.info("model loaded: version=%s engine=%s classes=%d device=%s embeddings=%s", model.version, model.engine,
                model.num_classes, device, model.embeddings)
    return model


def _warm_up(model: LoadedModel) -> None:
    # The first forward pays for allocator and kernel set-up; pay it before /ping says ready.
    image = torch.zeros(3, model.preset.resize_size, model.preset.resize_size, dtype=torch.uint8)
    for _ in range(2):
        predict_fn(InferenceRequest([image]), model)


# --- input_fn -------------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _parse_top_k(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise RequestError(400, f"{where} must be a positive integer, not {value!r}")
    try:
        top_k = int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"{where} must be a positive integer, not {value!r}") from None
    if top_k < 1 or str(top_k) != str(value).strip():
        raise RequestError(400, f"{where} must be a positive integer, not {value!r}")
    return top_k


def _request_headers(context: Any) -> Mapping[str, str]:
    """Headers from the local host (a mapping) or from the toolkit's model-server context."""
    if context is None:
        return {}
    if isinstance(context, Mapping):
        return context
    try:
        return context.request_processor[0].get_request_properties() or {}
    except (AttributeError, IndexError, TypeError):
        return {}


_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def _parse_flag(value: Any, where: str) -> bool:
    """A yes/no: JSON's true/false or 0/1, or the header's 1/0/true/false."""
    if isinstance(value, bool):
        return value
    flag = _FLAGS.get(str(value).strip().lower()) if isinstance(value, (int, str)) else None
    if flag is None:
        raise RequestError(400, f"{where} must be 1 or 0 (true or false), not {value!r}")
    return flag


def _custom_attributes(headers: Mapping[str, str]) -> dict[str, str]:
    """The custom attributes header's `name=value` pairs (comma- or semicolon-separated)."""
    wanted = CUSTOM_ATTRIBUTES_HEADER.lower()
    attributes = next((str(v) for k, v in headers.items() if str(k).lower() == wanted), "")
    pairs = (attribute.partition("=") for attribute in attributes.replace(";", ",").split(","))
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip()}


def _decode_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(400, f"{where} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where} is not valid base64") from None


def _images_from_json(body: bytes) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """The images, and the options the body sets (top_k, embeddings), each only when given."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"body is not valid JSON: {error}") from None
    if not isinstance(document, dict) or ("image" in document) == ("images" in document):
        raise RequestError(400, 'JSON body must be an object with either "image" or "images"')
    if "image" in document:
        items = [("image", document["image"])]
    else:
        images = document["images"]
        if not isinstance(images, list) or not images:
            raise RequestError(400, '"images" must be a non-empty list of base64 strings')
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise RequestError(413, f"{len(images)} images in one request; at most {MAX_IMAGES_PER_REQUEST}")
        items = [(f"images[{index}]", text) for index, text in enumerate(images)]
    options: dict[str, Any] = {}
    if document.get("top_k") is not None:
        options["top_k"] = _parse_top_k(document["top_k"], '"top_k"')
    if document.get(EMBEDDING_ATTRIBUTE) is not None:
        options["embeddings"] = _parse_flag(document[EMBEDDING_ATTRIBUTE], f'"{EMBEDDING_ATTRIBUTE}"')
    return [(where, _decode_base64(text, where)) for where, text in items], options


def _decode(data: bytes, where: str) -> torch.Tensor:
    """`where` names the image in a JSON body; a raw body's message is the decoder's alone."""
    prefix = f"{where}: " if where else ""
    try:
        return decode_rgb(data)
    except ImageTooLargeError as error:
        raise RequestError(413, f"{prefix}{error}") from None
    except ImageDecodeError as error:
        raise RequestError(400, f"{prefix}{error}") from None


def input_fn(request_body: bytes | str, request_content_type: str | None, context: Any = None) -> InferenceRequest:
    """Decode a request body into images; bad input raises RequestError (4xx).

    `context` is optional: a mapping of request headers (the local host) or the
    toolkit's context; either may carry top_k and embeddings in the custom attributes header.
    """
    content_type = _media_type(request_content_type)
    if content_type not in ACCEPTED_TYPES:
        raise RequestError(
            415, f"unsupported content type {request_content_type!r}; accepted: {', '.join(ACCEPTED_TYPES)}")
    body = request_body.encode() if isinstance(request_body, str) else bytes(request_body or b"")
    if not body:
        raise RequestError(400, "empty body")
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"body of {len(body)} bytes; at most {MAX_BODY_BYTES}")
    attributes = _custom_attributes(_request_headers(context))
    options: dict[str, Any] = {}
    if "top_k" in attributes:
        options["top_k"] = _parse_top_k(attributes["top_k"], f"{CUSTOM_ATTRIBUTES_HEADER} top_k")
    if EMBEDDING_ATTRIBUTE in attributes:
        options["embeddings"] = _parse_flag(attributes[EMBEDDING_ATTRIBUTE],
                                            f"{CUSTOM_ATTRIBUTES_HEADER} {EMBEDDING_ATTRIBUTE}")
    if content_type == JSON_TYPE:
        payloads, body_options = _images_from_json(body)
        options |= body_options  # the body wins
    else:
        payloads = [("", body)]
    return InferenceRequest([_decode(data, where) for where, data in payloads], **options)


# --- predict_fn -----------------------------------------------------------------------


def preprocess(images: Sequence[torch.Tensor], preset: ClassificationPresetEval) -> torch.Tensor:
    """The eval transform of every image, stacked into one batch (N, 3, crop, crop)."""
    return torch.stack([preset(image) for image in images])


_WITHOUT_EMBEDDINGS_LOGGED: set[str] = set()  # model versions asked for summaries they cannot give


def prepare_fn(request: InferenceRequest, model: LoadedModel) -> InferenceRequest:
    """Preprocess ahead of predict_fn, on the request's own thread. Not part of SageMaker's contract:
    its container never calls it, and predict_fn then preprocesses itself. The local endpoint host
    calls it so that one request's preprocessing overlaps another batch's forward pass, which runs
    on the host's one model thread."""
    with torch.inference_mode():
        return replace(request, batch=preprocess(request.images, model.preset))


def predict_fn(request: InferenceRequest, model: LoadedModel) -> Prediction:
    """Preprocess (unless prepare_fn did) and run one batched forward pass in inference mode: logits,
    and the embedding summaries from the same pass when the model gives them (kept only when asked for)."""
    with torch.inference_mode():
        batch = request.batch if request.batch is not None else preprocess(request.images, model.preset)
        batch = batch.to(model.device)
        output = model.forward(batch)
        logits, summaries = output if isinstance(output, tuple) else (output, None)
        probabilities = torch.softmax(logits.float(), dim=1).cpu()
    embeddings = None
    if request.embeddings and summaries is not None:
        embeddings = summaries.float().cpu()
    elif request.embeddings and model.version not in _WITHOUT_EMBEDDINGS_LOGGED:
        _WITHOUT_EMBEDDINGS_LOGGED.add(model.version)
        logger.warning("embedding summaries asked for, but model %s has none (no %s in its artefact, or an "
                       "optimised model without them): answering without them", model.version, EMBEDDING_FILE)
    return Prediction(probabilities, model.classes, model.version, request.top_k, model.engine, embeddings)


# --- output_fn ------------------------------------------------------------------------


def _accepts_json(accept: str | None) -> bool:
    ranges = {_media_type(part) for part in (accept or "").split(",")}
    return not accept or bool(ranges & {JSON_TYPE, "*/*", "application/*", ""})


def output_fn(prediction: Prediction, accept: str | None) -> tuple[str, str]:
    """The top-k labels and probabilities of every image, as JSON."""
    if not _accepts_json(accept):
        raise RequestError(406, f"cannot answer as {accept!r}; the answer is {JSON_TYPE}")
    num_classes = len(prediction.classes)
    k = min(prediction.top_k or DEFAULT_TOP_K, num_classes)
    values, indices = prediction.probabilities.topk(k, dim=1)
    predictions = [
        [{"label": prediction.classes[i], "probability": p} for p, i in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]
    body = {"model_version": prediction.model_version, "engine": prediction.engine, "num_classes": num_classes,
            "predictions": predictions}
    if prediction.embeddings is not None:
        body["embeddings"] = prediction.embeddings.tolist()
    return json.dumps(body), JSON_TYPE


# --- dynamic batching (the local endpoint host merges concurrent requests) ---------------


def merge_requests(requests: Sequence[InferenceRequest]) -> InferenceRequest:
    """One request holding every image of `requests`, in order; it asks for the embedding
    summaries when any of them does (split_prediction gives them to those that asked)."""
    batches = [request.batch for request in requests]
    return InferenceRequest([image for request in requests for image in request.images],
                            embeddings=any(request.embeddings for request in requests),
                            batch=torch.cat(batches) if all(b is not None for b in batches) else None)


def split_prediction(prediction: Prediction, requests: Sequence[InferenceRequest]) -> list[Prediction]:
    """Undo merge_requests: one Prediction per request, each with its own top_k, and its images'
    embedding summaries when it asked for them."""
    parts, start = [], 0
    for request in requests:
        stop = start + len(request.images)
        embeddings = prediction.embeddings
        parts.append(Prediction(prediction.probabilities[start:stop], prediction.classes,
                                prediction.model_version, request.top_k, prediction.engine,
                                embeddings[start:stop] if request.embeddings and embeddings is not None else None))
        start = stop
    return parts
