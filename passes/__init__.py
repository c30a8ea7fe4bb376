"""Passes: pure functions IR -> IR. The pipeline in ds4c/pipeline.py is a list literal of them."""
