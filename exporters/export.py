"""`edgert export`: a Hugging Face encoder → a validated ONNX graph with manifest and tokenizer."""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import edgert
from edgert._io import DISK_FULL, atomic_output, check_output_path
from edgert.errors import EdgertError, first_line
from edgert.exporters.custom_ops import attach_functions
from edgert.exporters.optimize import Optimization, optimize_for_ort_cpu
from edgert.plan import MANIFEST_KEY, TOKENIZER_KEY, HeadPlan, Manifest
from edgert.session import Session, session_options
from edgert.text import TextTokenizer

TASKS = ("feature-extraction", "sentence-embedding")
DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4
MIN_OPSET = 18  # the torch.onnx dynamo exporter's floor

Step = Callable[[str], None]


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    seconds: float

    @property
    def diffs(self) -> dict[str, float]:
        return self.manifest.validation["max_abs_diff"]


def export(source: str, output: str | os.PathLike, *, task: str | None = None,
           opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL, transform=None,
           calib: str | os.PathLike | None = None, calib_size: int = 64,
           optimize: bool = True, on_step: Step | None = None) -> ExportResult:
    """Export `source` (a built-in name or a Hugging Face directory) to `output`.

    task: feature-extraction or sentence-embedding (None: the model's default, else
    feature-extraction). transform: an exporters.heads.Transform (plan, pruning, GQA,
    softmax) applied to the attention heads first; calib: its calibration data (.txt or
    .npz; default: the built-in model's set). Gate weights in the checkpoint turn on gated
    attention. optimize: fuse attention and bias+GELU into ONNX Runtime
    CPU kernels (com.microsoft ops); False keeps a portable graph for TensorRT and other
    runtimes. The graph is validated against the (transformed) torch model on sample
    inputs and only written if every output agrees within `atol`.
    """
    from edgert.exporters.hf_encoder import load_encoder
    from edgert.models.zoo import resolve_source

    quiet_libraries()
    step = on_step or (lambda _: None)
    start = time.perf_counter()
    if opset < MIN_OPSET:
        raise EdgertError(f"opset {opset} is too old; the exporter needs >= {MIN_OPSET}")
    if not atol > 0:
        raise EdgertError(f"atol must be > 0, got {atol}")
    output = check_output_path(output)
    step("load")
    model_source = resolve_source(source)
    task = task or model_source.default_task or "feature-extraction"
    if task not in TASKS:
        raise EdgertError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    encoder = load_encoder(model_source)
    plan = _transform_heads(encoder, model_source, task, transform, calib, calib_size, step)

    from edgert.models.encoders import TASK_OUTPUTS, EncoderExport

    module = EncoderExport(encoder.model, task,
                           uses_token_types="token_type_ids" in encoder.input_names).eval()
    output_names = TASK_OUTPUTS[task]
    manifest = Manifest(
        edgert_version=edgert.__version__, source=model_source.name, task=task, opset=opset,
        inputs={n: n for n in encoder.input_names},
        dims={"batch": "batch", "sequence": "sequence"},
        text={"max_length": encoder.max_length, "vocab_size": encoder.vocab_size}
        if encoder.tokenizer_json else None,
        plan=plan,
        extra={"model_type": encoder.model_type,
               "pooling": "mean, l2-normalised" if task == "sentence-embedding" else None},
    )
    trace, checks = _sample_inputs(encoder, manifest)

    with atomic_output(output) as tmp:
        step("trace")
        _torch_export(module, trace, encoder.input_names, output_names, opset, tmp)
        graph = _load_and_pin(tmp)
        manifest.extra["custom_ops"] = sorted({n.op_type for n in graph.graph.node if n.domain == "edgert"})
        optimization = Optimization()
        if optimize:
            step("optimize")
            graph, optimization = optimize_for_ort_cpu(graph)
            _pin(graph)
        manifest.extra.update(optimization.manifest_entries())
        step("write")
        _save_with_metadata(graph, tmp, manifest, encoder.tokenizer_json)
        step("validate")
        from edgert.exporters.validate import check_diffs, max_abs_diffs

        session = Session(tmp, options=session_options())
        diffs = max_abs_diffs(session, module, encoder.input_names, output_names, checks)
        del session
        manifest.validation = {
            "atol": atol, "max_abs_diff": diffs,
            "samples": [list(s[encoder.input_names[0]].shape) for s in checks],
        }
        check_diffs(diffs, atol, hint=f"optimized for {optimization.target}; --no-optimize "
                    "exports the unfused graph" if optimization.target else None)
        _save_with_metadata(graph, tmp, manifest, encoder.tokenizer_json)  # with the diffs
    return ExportResult(output, manifest, time.perf_counter() - start)


class TorchInputs:
    """What load_calibration needs to know about a model that is not in ONNX yet."""

    def __init__(self, encoder, name: str):
        self.input_names = list(encoder.input_names)
        self.path = Path(name)
        self._encoder = encoder

    @property
    def tokenizer(self) -> TextTokenizer:
        if not self._encoder.tokenizer_json:
            raise EdgertError("this model has no tokenizer")
        return TextTokenizer(self._encoder.tokenizer_json, max_length=self._encoder.max_length,
                             input_roles={n: n for n in self.input_names})

    def check_inputs(self, feeds):
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EdgertError(f"calibration data lacks input {missing[0]!r}")
        return {n: np.asarray(feeds[n], dtype=np.int64) for n in self.input_names}


def _transform_heads(encoder, model_source, task: str, transform, calib, calib_size: int,
                     step: Step) -> HeadPlan:
    """Apply `transform` (and checkpoint gates) to encoder.model in place; return the plan."""
    from edgert.exporters.heads import apply_transform, read_gates

    gates = read_gates(model_source.directory, encoder.num_layers)
    if transform is None and gates is None:
        return HeadPlan.full(encoder.num_layers, encoder.num_heads, head_dim=encoder.head_dim)
    from edgert.exporters.heads import Transform

    transform = transform or Transform()
    samples = []
    if transform.needs_calibration:
        from edgert.quant.calib import BUNDLED, load_calibration

        calib = calib or BUNDLED.get(model_source.name, (None,))[0]
        if calib is not None:  # else apply_transform says calibration data is missing
            step("calibration")
            samples = load_calibration(calib, TorchInputs(encoder, model_source.name), size=calib_size)
    step("heads")
    from edgert.exporters.importance import encoder_loss

    loss = encoder_loss(task, "token_type_ids" in encoder.input_names)
    return apply_transform(encoder.model, transform, samples, loss=loss, gates=gates)


def quiet_libraries() -> None:
    """Silence transformers' weight-loading bars and torch.onnx's registration warnings."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import torch.onnx  # noqa: F401  (torch sets its loggers' levels when this is imported)

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def _sample_inputs(encoder, manifest: Manifest) -> tuple[dict, list[dict]]:
    """Inputs to trace with, and several differently shaped inputs to validate on."""
    if encoder.tokenizer_json:
        from edgert.exporters.samples import SAMPLE_SENTENCES

        tokenize = TextTokenizer(encoder.tokenizer_json, max_length=encoder.max_length,
                                 input_roles=manifest.inputs)
        trace = tokenize(SAMPLE_SENTENCES[:2])
        checks = [tokenize(SAMPLE_SENTENCES[2:7]), tokenize(SAMPLE_SENTENCES[7]),
                  tokenize(SAMPLE_SENTENCES)]
    else:
        trace = _random_tokens(encoder, batch=2, seq=9, seed=0)
        checks = [_random_tokens(encoder, batch=b, seq=s, seed=b) for b, s in ((3, 17), (1, 5))]
    return trace, checks


def _random_tokens(encoder, *, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, encoder.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq // 2:] = 0  # one padded row
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in encoder.input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def _torch_export(module, sample: dict[str, np.ndarray], input_names: list[str],
                  output_names: list[str], opset: int, path: Path) -> None:
    import torch

    from edgert.exporters.custom_ops import translation_table

    args = tuple(torch.from_numpy(sample[n]) for n in input_names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {n: {0: batch, 1: sequence} for n in input_names}
    # torch.onnx prints progress lines and warnings of its own; edgert shows its own steps.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset,
                              input_names=input_names, output_names=output_names,
                              dynamic_shapes=dynamic, external_data=False, verbose=False,
                              custom_translation_table=translation_table())
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise  # atomic_output reports a full disk as such
            raise EdgertError(f"torch.onnx.export failed: {type(exc).__name__}: {first_line(exc)}") from None


def _load_and_pin(path: Path):
    """Load the exported graph, check it, and pin its IR version and producer."""
    import onnx

    model = onnx.load(str(path))
    _pin(model)
    attach_functions(model)  # bodies of edgert ops, so plain ONNX Runtime runs them
    onnx.checker.check_model(model)
    return model


def _pin(model) -> None:
    """Set `model`'s IR version to the lowest that carries its opsets (older runtimes refuse
    newer IRs) and its producer to edgert."""
    import onnx

    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.producer_name, model.producer_version = "edgert", edgert.__version__


def _save_with_metadata(model, path: Path, manifest: Manifest, tokenizer_json: str | None) -> None:
    """Store manifest and tokenizer in metadata_props and write the model to `path`."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props[MANIFEST_KEY] = manifest.to_json()
    if tokenizer_json:
        props[TOKENIZER_KEY] = tokenizer_json
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
