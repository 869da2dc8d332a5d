"""Evaluation runner: manifests, metric loop, reports (entry point: eval/run.py)."""
