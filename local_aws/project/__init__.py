"""This project on the emulated services: what only this product knows.

The services beside this package (the local SageMaker, the endpoint host, the
dispatcher that plays Lambda, moto and its patches) know nothing of the product and
are configured with what they need. Here lives that configuration: the Chalice stage
(`stage`), the CloudFormation that Chalice does not create, rendered for moto
(`infra`), what the product's containers hold (`containers`), the whole stack
(`stack`, run as a child process by `launcher`) and the demo (`demo`).
"""
