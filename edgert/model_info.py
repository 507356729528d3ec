"""What `edgert inspect` shows: signature, opsets, op histogram, parameters, custom ops,
and the edgert manifest. Parses the graph with the `onnx` package (no session needed), imported
in the functions that parse: `import edgert` and `Session` never load it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgert.errors import ModelLoadError, first_line
from edgert.op_spec import DOMAIN
from edgert.plan import MANIFEST_KEY, TOKENIZER_KEY, Manifest


@dataclass
class ModelInfo:
    path: str
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    op_histogram: dict[str, int]
    parameters: int
    parameter_bytes: int
    custom_ops: list[str]
    functions: list[str]
    manifest: dict[str, Any] | None = None
    has_tokenizer: bool = False
    metadata_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _value_info(value) -> dict[str, Any]:
    import onnx

    tensor = value.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
    return {"name": value.name, "dtype": dtype, "shape": dims}


def load_onnx_proto(path: str | Path):
    """Load a ModelProto (weights left on disk), raising ModelLoadError on failure."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelLoadError(f"{path} is not a readable ONNX model ({type(exc).__name__}: "
                             f"{first_line(exc)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(f"{path} is not an ONNX model (no graph or opset)")
    return model


def inspect_model(path: str | Path) -> ModelInfo:
    """Summarise the ONNX model at `path`."""
    import onnx

    model = load_onnx_proto(path)
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    histogram = Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in graph.node)
    parameters = sum(int(np.prod(t.dims)) for t in graph.initializer)
    parameter_bytes = sum(
        int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in graph.initializer)
    metadata = {p.key: p.value for p in model.metadata_props}
    manifest = None
    if MANIFEST_KEY in metadata:
        try:
            manifest = json.loads(Manifest.from_json(metadata[MANIFEST_KEY]).to_json())
        except Exception as exc:
            raise ModelLoadError(f"{path}: corrupt edgert manifest ({exc})") from None
    return ModelInfo(
        path=str(path),
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        inputs=[_value_info(v) for v in graph.input if v.name not in initializer_names],
        outputs=[_value_info(v) for v in graph.output],
        op_histogram=dict(histogram.most_common()),
        parameters=parameters,
        parameter_bytes=parameter_bytes,
        custom_ops=sorted({n.op_type for n in graph.node if n.domain == DOMAIN}),
        functions=[f"{f.domain}::{f.name}" for f in model.functions],
        manifest=manifest,
        has_tokenizer=TOKENIZER_KEY in metadata,
        metadata_keys=sorted(metadata),
    )
