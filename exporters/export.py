"""`edgert export`'s shared steps: the source resolves to a kind (models/sources.py), the
kind's recipe prepares the model (exporters/recipe.py), then trace → pin → optimize →
validate → atomic write, with the manifest and tokenizer in the graph's metadata.

torch and transformers are imported inside the functions that use them: `edgert export
--help` imports this module for its defaults and must not load them.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

import edgert
from edgert._io import DISK_FULL, atomic_output, check_output_path
from edgert.errors import EdgertError, OptionError, first_line
from edgert.exporters.custom_ops import OVERLOAD_IR_VERSION, attach_functions, translation_table
from edgert.exporters.optimize import Optimization, count_ops, optimize_for_ort_cpu
from edgert.exporters.recipe import Step, TextOptions, VisionOptions, options_for, recipe_for
from edgert.models.sources import ModelSource, resolve_source
from edgert.op_spec import DOMAIN
from edgert.plan import MANIFEST_KEY, TOKENIZER_KEY, Manifest
from edgert.session import Session, session_options

TASKS = ("feature-extraction", "sentence-embedding", "text-generation")
DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4
# Relative to each output's largest magnitude. MiniLM's outputs stay within 1, so atol
# decides there; the decode benchmark's 8-layer model has logits near 34 and differs from
# torch by 1.2e-3 (3e-5 relative) from float32 rounding alone.
DEFAULT_RTOL = 1e-4
MIN_OPSET = 18  # the torch.onnx dynamo exporter's floor


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    seconds: float

    @property
    def diffs(self) -> dict[str, float]:
        return self.manifest.validation["max_abs_diff"]


def export(source: str | os.PathLike | ModelSource, output: str | os.PathLike, *, task: str | None = None,
           opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
           transform=None,
           calib: str | os.PathLike | None = None, calib_size: int = 64,
           optimize: bool = True, checkpoint: str | os.PathLike | None = None, resolution: int | None = None,
           custom_ops: bool = True, on_step: Step | None = None) -> ExportResult:
    """Export `source` (a built-in name, a Hugging Face directory, a vision variant such as
    efficientvit-m0 or shvit-s1, or a ModelSource from resolve_source) to `output`.

    The source's kind (encoder or decoder, from config.json's model_type; vision) picks the
    recipe that decides what the graph computes; see exporters/recipe.py. task: for encoders,
    feature-extraction or sentence-embedding (None: the model's default, else
    feature-extraction); decoders are text-generation, vision models image-classification.

    Text models take `transform`: an exporters.heads.Transform (plan, pruning, GQA, softmax,
    KV cache policies) applied to the attention heads first; `calib`: its calibration data
    (.txt or .npz; default: the built-in model's set), at most `calib_size` examples. Gate
    weights in the checkpoint turn on gated attention. Vision variants take `checkpoint`
    (timm-layout weights; random init without), `resolution` (default: the checkpoint's or the
    variant's) and `custom_ops` (attention as edgert ops, else plain ONNX); their BatchNorms are
    folded, and the graph is validated against the unfolded model. An option of the other kind
    is an OptionError.

    optimize: fuse attention and bias+GELU into ONNX Runtime CPU kernels where the recipe has
    such fusions (com.microsoft ops); False keeps a portable graph for TensorRT and other
    runtimes. The graph is validated against the (transformed) torch model on sample inputs and
    only written if every output agrees within atol + rtol x the output's largest magnitude.
    `output` may not be one of the inputs (the source directory, `checkpoint`, `calib`).
    """
    from edgert.exporters.hf_loading import quiet_libraries
    from edgert.exporters.validate import check_diffs, max_abs_diffs

    step = on_step or (lambda _: None)
    start = time.perf_counter()
    if opset < MIN_OPSET:
        raise OptionError(f"opset {opset} is too old; the exporter needs >= {MIN_OPSET}")
    if not atol > 0:
        raise OptionError(f"atol must be > 0, got {atol}")
    if not rtol >= 0:
        raise OptionError(f"rtol must be >= 0, got {rtol}")
    model_source = source if isinstance(source, ModelSource) else resolve_source(source)
    output = check_output_path(output, inputs=(model_source.directory, checkpoint, calib))
    options = options_for(model_source.kind, TextOptions(transform, calib, calib_size),
                          VisionOptions(checkpoint, resolution, custom_ops))
    quiet_libraries()
    step("load")
    prepared = recipe_for(model_source.kind).prepare(model_source, task, options, step)
    manifest = prepared.manifest
    manifest.opset = opset
    optimization = Optimization()
    if optimize and prepared.fuse_before_trace:
        step("optimize")
        optimization = prepared.fuse_before_trace()

    with atomic_output(output) as tmp:
        step("trace")
        _torch_export(prepared, opset, tmp)
        graph = _load_and_pin(tmp)
        manifest.extra["custom_ops"] = sorted({n.op_type for n in graph.graph.node if n.domain == DOMAIN})
        if optimization.target:
            optimization.fusions = count_ops(graph, optimization.fusions)
        if optimize and prepared.ort_cpu_fusions:
            step("optimize")
            graph, optimization = optimize_for_ort_cpu(graph)
            _pin(graph)
        manifest.extra.update(optimization.manifest_entries())
        step("write")
        _save_with_metadata(graph, tmp, manifest, prepared.tokenizer_json)
        step("validate")
        session = Session(tmp, options=session_options())
        reference = prepared.module if prepared.reference is None else prepared.reference
        diffs, scales = max_abs_diffs(session, reference, prepared.input_names, prepared.output_names,
                                      prepared.checks)
        del session
        manifest.validation = {
            "atol": atol, "rtol": rtol, "max_abs_diff": diffs, "max_abs_reference": scales,
            "samples": [list(s[prepared.input_names[0]].shape) for s in prepared.checks],
        }
        check_diffs(diffs, atol, rtol=rtol, scales=scales, hint=f"optimized for {optimization.target}; --no-optimize "
                    "exports the unfused graph" if optimization.target else None)
        _save_with_metadata(graph, tmp, manifest, prepared.tokenizer_json)  # with the diffs
    return ExportResult(output, manifest, time.perf_counter() - start)


def _torch_export(prepared, opset: int, path: Path) -> None:
    import torch

    args = tuple(torch.from_numpy(prepared.trace[n]) for n in prepared.input_names)
    dims: dict[str, torch.export.Dim] = {}
    dynamic = tuple({axis: dims.setdefault(name, torch.export.Dim(name, min=1)) for axis, name in
                     prepared.dynamic_axes.get(n, {}).items()} for n in prepared.input_names)
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(prepared.module.forward).parameters.values()):
        dynamic = (dynamic,)  # torch.export matches a *inputs signature as one tuple argument
    # torch.onnx prints progress lines and warnings of its own; edgert shows its own steps.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(prepared.module, args, str(path), dynamo=True, opset_version=opset,
                              input_names=prepared.input_names, output_names=prepared.output_names,
                              dynamic_shapes=dynamic, external_data=False, verbose=False,
                              custom_translation_table=translation_table())
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise  # atomic_output reports a full disk as such
            raise EdgertError(f"torch.onnx.export failed: {type(exc).__name__}: {first_line(exc)}") from None


def _load_and_pin(path: Path):
    """Load the exported graph, check it, and pin its IR version and producer."""
    model = onnx.load(str(path))
    attach_functions(model)  # bodies of edgert ops, so plain ONNX Runtime runs them
    _pin(model)
    onnx.checker.check_model(model)
    return model


def _pin(model) -> None:
    """Set `model`'s IR version to the lowest that carries its opsets (older runtimes refuse
    newer IRs) and its producer to edgert."""
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if any(f.overload for f in model.functions):
        model.ir_version = max(model.ir_version, OVERLOAD_IR_VERSION)
    model.producer_name, model.producer_version = "edgert", edgert.__version__


def _save_with_metadata(model, path: Path, manifest: Manifest, tokenizer_json: str | None) -> None:
    """Store manifest and tokenizer in metadata_props and write the model to `path`."""
    props = {p.key: p.value for p in model.metadata_props}
    props[MANIFEST_KEY] = manifest.to_json()
    if tokenizer_json:
        props[TOKENIZER_KEY] = tokenizer_json
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
