"""Torch side of edgert: the model zoo and export wrappers (needs the `export` extra)."""
