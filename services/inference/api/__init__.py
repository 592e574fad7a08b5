"""The inference job API: `python -m services.inference.api`."""
