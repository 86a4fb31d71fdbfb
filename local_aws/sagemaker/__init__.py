"""The local SageMaker: trains, tunes and serves for real behind AWS's wire protocols.

Laid out like one of moto's services: `backend` keeps the state (records and the
backend's operations), `responses` speaks the JSON 1.1 control plane and the
runtime's REST protocol, `server` serves both over HTTP. The work itself lives in
`training_jobs` (job runner), `tuning` (optuna), `endpoints` (blue/green over endpoint
host processes), `s3_transfer` (channels down, artefacts up) and `events` (EventBridge).
`LocalSageMaker` (server.py) runs it in a process; point boto3 at it with
AWS_ENDPOINT_URL_SAGEMAKER and AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME.
"""
