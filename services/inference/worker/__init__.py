"""The inference worker: `python -m services.inference.worker`."""
