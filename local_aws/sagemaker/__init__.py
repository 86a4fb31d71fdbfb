"""The local SageMaker: trains, tunes and serves for real behind AWS's wire protocols.

Laid out like one of moto's services: `backend` is the façade whose methods are the
operations, `responses` speaks the JSON 1.1 control plane and the runtime's REST
protocol, `server` serves both over HTTP. Below the façade, `state` keeps the records
(`records`), persists them (`store`) and publishes their changes (`events`); the work
itself lives in the runners, which know the state and never the façade: `training_jobs`
(job runner), `tuning` (optuna), `endpoints` (blue/green over endpoint host processes),
with `s3_transfer` (channels down, artefacts up).
`LocalSageMaker` (server.py) runs it in a process; point boto3 at it with
AWS_ENDPOINT_URL_SAGEMAKER and AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME.
"""
