"""Kiln's endpoints, one module each; `contract.py` is what they and the server share.

The server finds the endpoints by importing every module of this package and serving each
`Pipeline` subclass that sets `endpoint_id` in its own body, so adding an endpoint is adding one
module. Nothing here is imported eagerly: importing `pipelines.contract` loads no endpoint.
"""
