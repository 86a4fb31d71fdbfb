"""The Lambda side of the pipeline (packaged through vendor/chalice_app; app.py forwards here).

    events.py              typed S3 / EventBridge events and the rule patterns
    config.py              Settings from the stage's environment
    sagemaker_requests.py  pure builders of every SageMaker request
    sagemaker_calls.py     the thin edge that sends them (a repeated create is a success)
    manifest.py, gate.py   pure decisions: the data snapshot, the quality gate
                           (what an image is: training/image_contract.py, vendored with the app)
    invocations.py         pure builders of batched InvokeEndpoint requests and readers of their answers
    store/                 DynamoDB: arrivals and bursts, runs and the lock, the model registry, predictions
                           (items.py: the paged query they share)
    retraining.py          arrivals → a run per burst → tuning → the final training job
    deployment.py          final job → gate → endpoint created/updated → model LIVE
    predictions.py         a batch of incoming images → endpoint → one prediction item each; re-drive of PENDING ones
    api.py                 the HTTP API's logic
    handlers.py            Lambda entry points under Powertools Logger, Metrics and Tracer

Nothing here imports torch, torchvision, smdebug or the sagemaker SDK.
"""
