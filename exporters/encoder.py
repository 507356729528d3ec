"""The encoder recipe: a BERT-family model (bert, roberta, distilbert) and its tokenizer
from a local Hugging Face directory → hidden states or a sentence embedding."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import numpy as np
from transformers import AutoModel

import edgert
from edgert.errors import OptionError
from edgert.exporters.heads import Transform, apply_transform, read_gates
from edgert.exporters.hf_loading import load_config, load_pretrained, read_tokenizer
from edgert.exporters.importance import encoder_loss
from edgert.exporters.recipe import Prepared, Step, TextOptions
from edgert.exporters.samples import SAMPLE_SENTENCES
from edgert.exporters.text_calibration import TorchInputs, calibration_samples
from edgert.models.adapters import identity_plan
from edgert.models.encoder import TASK_OUTPUTS, EncoderExport
from edgert.models.families import FAMILIES
from edgert.models.sources import ModelSource
from edgert.plan import HeadPlan, Manifest
from edgert.text import TextTokenizer

TASKS = ("feature-extraction", "sentence-embedding")


@dataclass
class LoadedEncoder:
    """A torch encoder in eval mode plus what the exporter needs to know about it."""

    model: object  # transformers PreTrainedModel
    model_type: str
    input_names: list[str]
    num_layers: int
    num_heads: int
    head_dim: int
    vocab_size: int
    max_length: int
    pad_token_id: int
    tokenizer_json: str | None

    def calibration_inputs(self, name: str) -> TorchInputs:
        return TorchInputs(self.input_names, name, self.tokenizer_json, self.max_length)


def load(source: ModelSource) -> LoadedEncoder:
    """Load `source` with transformers (offline; nothing is downloaded)."""
    config = load_config(source, "encoder")
    model = load_pretrained(AutoModel, source)
    uses_token_types = "token_type_ids" in inspect.signature(model.forward).parameters
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types else [])
    num_heads = config.num_attention_heads if hasattr(config, "num_attention_heads") else config.n_heads
    hidden = config.hidden_size if hasattr(config, "hidden_size") else config.dim
    num_layers = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layers
    tokenizer_json, model_max = read_tokenizer(source)
    max_length = min(_sentence_max_length(source) or model_max or config.max_position_embeddings,
                     config.max_position_embeddings)
    return LoadedEncoder(model, config.model_type, input_names, num_layers, num_heads,
                         hidden // num_heads, config.vocab_size, max_length,
                         config.pad_token_id or 0, tokenizer_json)


def _sentence_max_length(source: ModelSource) -> int | None:
    """max_seq_length of a sentence-transformers model directory, if it is one."""
    path = source.directory / "sentence_bert_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("max_seq_length")


def prepare(source: ModelSource, task: str | None, options: TextOptions, step: Step) -> Prepared:
    """Load, transform the heads of, and wrap an encoder for tracing."""
    if task is None:
        task = source.default_task or "feature-extraction"
    if task not in TASKS:
        raise OptionError(f"unknown task {task!r} for an encoder; choose one of {', '.join(TASKS)}")
    encoder = load(source)
    plan = _transform_heads(encoder, source, task, options, step)
    uses_token_types = "token_type_ids" in encoder.input_names
    module = EncoderExport(encoder.model, task, uses_token_types=uses_token_types).eval()
    manifest = Manifest(
        edgert_version=edgert.__version__, source=source.name, task=task, opset=0,
        inputs={n: n for n in encoder.input_names},
        dims={"batch": "batch", "sequence": "sequence"},
        text={"max_length": encoder.max_length, "vocab_size": encoder.vocab_size}
        if encoder.tokenizer_json else None,
        plan=plan,
        extra={"model_type": encoder.model_type,
               "pooling": "mean, l2-normalised" if task == "sentence-embedding" else None},
    )
    trace, checks = _sample_inputs(encoder, manifest)
    return Prepared(module, encoder.input_names, TASK_OUTPUTS[task],
                    {n: {0: "batch", 1: "sequence"} for n in encoder.input_names}, trace, checks,
                    manifest, encoder.tokenizer_json, ort_cpu_fusions=True)


def _transform_heads(encoder: LoadedEncoder, source: ModelSource, task: str, options: TextOptions,
                     step: Step) -> HeadPlan:
    """Apply the requested transform (and checkpoint gates) to encoder.model in place; return the plan."""
    gates = read_gates(source.directory, encoder.num_layers)
    if options.transform is None and gates is None:
        if FAMILIES[encoder.model_type].adaptable:
            return identity_plan(encoder.model)
        return HeadPlan.full(encoder.num_layers, encoder.num_heads, head_dim=encoder.head_dim)
    transform = options.transform or Transform()
    if transform.retrieval is not None:
        raise OptionError("KV cache policies (--retrieval-heads) apply to decoders; this is an encoder")
    samples = []
    if transform.needs_calibration:
        samples = calibration_samples(encoder.calibration_inputs(source.name), source, options.calib,
                                      options.calib_size, step)
    step("heads")
    loss = encoder_loss(task, "token_type_ids" in encoder.input_names)
    return apply_transform(encoder.model, transform, samples, loss=loss, gates=gates)


def _sample_inputs(encoder: LoadedEncoder, manifest: Manifest) -> tuple[dict, list[dict]]:
    """Inputs to trace with, and several differently shaped inputs to validate on."""
    if encoder.tokenizer_json:
        tokenize = TextTokenizer(encoder.tokenizer_json, max_length=encoder.max_length,
                                 input_roles=manifest.inputs)
        trace = tokenize(SAMPLE_SENTENCES[:2])
        checks = [tokenize(SAMPLE_SENTENCES[2:7]), tokenize(SAMPLE_SENTENCES[7]),
                  tokenize(SAMPLE_SENTENCES)]
    else:
        trace = _random_tokens(encoder, batch=2, seq=9, seed=0)
        checks = [_random_tokens(encoder, batch=b, seq=s, seed=b) for b, s in ((3, 17), (1, 5))]
    return trace, checks


def _random_tokens(encoder: LoadedEncoder, *, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, encoder.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq // 2:] = 0  # one padded row
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in encoder.input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds
