"""Applies every service's SQL migrations (auth, gallery, inference) in one go.

Each service also applies its own migrations at start; this entry point exists for deployments that
migrate before new pods start (the Helm chart's pre-install/pre-upgrade hook Job):
`python -m services.migrate [schema ...]`, configured by `EASEL_DATABASE_URL`.
"""
