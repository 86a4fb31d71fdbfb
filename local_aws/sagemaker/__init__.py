"""The local SageMaker: trains, tunes and serves for real behind AWS's wire protocols.

Laid out like one of moto's services: `models` keeps the state (records and the
backend's operations), `responses` speaks the JSON 1.1 control plane and the
runtime's REST protocol, `server` serves both over HTTP. The work itself lives in
`training` (job runner), `tuning` (optuna), `endpoints` (blue/green over endpoint
host processes) and `events` (EventBridge). Run it with

    python -m local_aws.sagemaker --port 8090 --state-dir .local-sagemaker

and point boto3 at it with AWS_ENDPOINT_URL_SAGEMAKER and
AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME.
"""
