"""torch → ONNX export with validation (needs the `export` extra)."""

from edgert.exporters.export import ExportResult, export

__all__ = ["ExportResult", "export"]
