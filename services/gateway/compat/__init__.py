"""The two faces that speak other projects' APIs: `openai` (OpenAI's Images API at /v1) and `a1111`
(AUTOMATIC1111's web UI API at /sdapi/v1).

Each parses its own request shape, calls the studio through the shared helpers in
`services.gateway.compat_common`, answers in the original's shapes (errors included) and publishes
an OpenAPI document generated from pydantic models of those shapes (`documents`).
"""
