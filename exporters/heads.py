"""Head analysis and transforms on torch models: mask-gradient importance, pruning, MHA -> GQA,
softmax changes and gates, all expressed as a HeadPlan and applied by the adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edgert.errors import EdgertError, PlanError
from edgert.models.adapters import adapt, head_attentions, model_shape, original_weights
from edgert.models.transforms import (GQA_METHODS, build_attention, group_plan, mean_merges,
                                      prune_by_score, svd_merges)
from edgert.plan import HeadPlan, Softmax

Feeds = dict[str, np.ndarray]
Loss = Callable[[object, dict[str, torch.Tensor], int], torch.Tensor]


def parse_softmax(text: str) -> Softmax:
    """`standard` or `clipped:GAMMA,ZETA` (e.g. clipped:-0.025,1)."""
    if text == "standard":
        return Softmax()
    kind, _, args = text.partition(":")
    if kind != "clipped":
        raise PlanError(f"unknown softmax {text!r}; use standard or clipped:GAMMA,ZETA")
    try:
        gamma, zeta = (float(v) for v in args.split(","))
    except ValueError:
        raise PlanError(f"bad softmax {text!r}; expected clipped:GAMMA,ZETA, e.g. clipped:-0.025,1") from None
    softmax = Softmax("clipped", gamma, zeta)
    softmax.check("--softmax")
    return softmax


def identity_plan(model) -> HeadPlan:
    shape = model_shape(model)
    return HeadPlan.full(shape.num_layers, shape.num_heads, shape.num_kv_heads, head_dim=shape.head_dim)


def with_softmax(plan: HeadPlan, softmax: Softmax) -> HeadPlan:
    return HeadPlan([replace(layer, softmax=softmax) for layer in plan.layers], plan.head_dim).check()


# ---- importance ---------------------------------------------------------------------------

def projection_loss(model, feeds: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """r . output with r ~ N(0, I) drawn per example: a label-free loss whose mask gradient
    has E|dL/dxi_h| proportional to the norm of the output's sensitivity to head h."""
    output = model(**feeds)
    output = output if isinstance(output, torch.Tensor) else output[0]
    generator = torch.Generator().manual_seed(seed)
    return (output * torch.randn(output.shape, generator=generator)).sum()


def next_token_loss(model, feeds: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """Causal LM loss on the calibration text itself (decoders)."""
    ids = feeds["input_ids"]
    return model(**feeds, labels=ids, use_cache=False).loss


def head_importance(model, samples: Sequence[Feeds], loss: Loss = projection_loss,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Michel et al. (2019) importance of every original head of an adapted model:
    E_x |dL/dxi_h| for a mask xi_h = 1 on each head's output, normalised per layer (L2) and
    then globally (max = 1). Pruned heads score 0. Returns [layers, original heads]."""
    attentions = head_attentions(model)
    masks = []
    for attention in attentions:
        attention.head_mask = torch.ones(attention.num_heads, requires_grad=True)
        masks.append(attention.head_mask)
    totals = [torch.zeros(a.num_heads) for a in attentions]
    try:
        for i, feeds in enumerate(samples):
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            value = loss(model, tensors, i)
            grads = torch.autograd.grad(value, [m for m in masks if m.numel()], allow_unused=True)
            grads = iter(grads)
            for total, mask in zip(totals, masks):
                if mask.numel():
                    grad = next(grads)
                    if grad is not None:
                        total += grad.abs()
            if progress:
                progress(1)
    finally:
        for attention in attentions:
            attention.head_mask = None
    shape = model_shape(model)
    scores = np.zeros((shape.num_layers, shape.num_heads))
    for layer, (attention, total) in enumerate(zip(attentions, totals)):
        row = total.numpy() / max(len(samples), 1)
        norm = np.linalg.norm(row)
        scores[layer, attention.kept_heads] = row / norm if norm > 0 else row
    peak = scores.max()
    return scores / peak if peak > 0 else scores


def random_scores(plan: HeadPlan, seed: int) -> np.ndarray:
    """Random head scores (the baseline that importance must beat)."""
    rng = np.random.default_rng(seed)
    return rng.random((len(plan.layers), plan.layers[0].num_heads))


# ---- calibration activations for low-rank GQA ---------------------------------------------

def kv_activations(model, samples: Sequence[Feeds]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the k and v projection outputs (before RoPE) over all non-padding tokens
    of `samples`, from an identity-adapted copy's projections: [tokens, kv * d] each."""
    attentions = head_attentions(model)
    store: list[dict[str, list[torch.Tensor]]] = [{"k": [], "v": []} for _ in attentions]
    current: dict[str, torch.Tensor] = {}

    def hook(index: int, key: str):
        def save(module, inputs, output):
            keep = current["mask"].reshape(-1)
            store[index][key].append(output.detach().reshape(-1, output.shape[-1])[keep])
        return save

    handles = []
    for i, attention in enumerate(attentions):
        handles.append(attention.k_proj.register_forward_hook(hook(i, "k")))
        handles.append(attention.v_proj.register_forward_hook(hook(i, "v")))
    try:
        with torch.no_grad():
            for feeds in samples:
                tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
                mask = tensors.get("attention_mask")
                current["mask"] = (mask.bool() if mask is not None
                                   else torch.ones_like(tensors["input_ids"], dtype=torch.bool))
                model(**tensors)
    finally:
        for handle in handles:
            handle.remove()
    return [(torch.cat(s["k"]), torch.cat(s["v"])) for s in store]


# ---- applying a plan -----------------------------------------------------------------------

@dataclass
class Transform:
    """What `edgert export` does to the heads, before tracing."""

    plan: HeadPlan | None = None  # a full plan (from --plan or analyze heads)
    prune: float | None = None  # fraction of heads to drop by importance
    kv_heads: int | None = None
    gqa_method: str = "mean"
    softmax: Softmax | None = None

    def check(self) -> None:
        if self.gqa_method not in GQA_METHODS:
            raise PlanError(f"unknown gqa method {self.gqa_method!r}; choose one of {', '.join(GQA_METHODS)}")
        if self.prune is not None and not 0 <= self.prune < 1:
            raise PlanError(f"--prune must lie in [0, 1) (pruning every head leaves no model), got {self.prune:g}")
        if self.kv_heads is not None and self.kv_heads < 1:
            raise PlanError(f"--kv-heads must be >= 1, got {self.kv_heads}")

    @property
    def needs_calibration(self) -> bool:
        return bool(self.prune) or (self.kv_heads is not None and self.gqa_method == "svd")

    @property
    def is_identity(self) -> bool:
        return (self.plan is None and not self.prune and self.kv_heads is None
                and self.softmax is None)


def apply_transform(model, transform: Transform, samples: Sequence[Feeds] = (), *,
                    loss: Loss = projection_loss, gates: list | None = None,
                    step: Callable[[str], None] = lambda _: None) -> HeadPlan:
    """Adapt `model` in place to the plan `transform` describes; return that plan."""
    transform.check()
    shape = model_shape(model)
    plan = transform.plan or identity_plan(model)
    plan.check_matches(shape.num_layers, shape.num_heads)
    if gates is not None:
        plan = HeadPlan([replace(layer, gated=True) for layer in plan.layers], plan.head_dim).check()
    if transform.needs_calibration and not samples:
        raise EdgertError("pruning by importance and svd grouping need calibration data (--calib)")
    originals = original_weights(model)
    if transform.prune:
        step("scoring heads")
        scorer = _adapted_copy(model, plan, originals, shape, gates)
        scores = head_importance(scorer, samples, loss)
        del scorer
        plan = prune_by_score(plan, scores, transform.prune)
    if plan.kept_heads == 0:
        raise PlanError("the plan prunes every head of every layer; nothing would be left")
    if transform.softmax is not None:
        plan = with_softmax(plan, transform.softmax)
    merges = None
    if transform.kv_heads is not None:
        plan = group_plan(plan, transform.kv_heads)
        if transform.gqa_method == "svd":
            step("collecting k/v activations")
            identity = _adapted_copy(model, identity_plan(model), originals, shape, None)
            activations = kv_activations(identity, samples)
            del identity
            merges = [svd_merges(layer, shape.num_kv_heads, k, v, rope=shape.rope)
                      for layer, (k, v) in zip(plan.layers, activations)]
    step("rebuilding attention")
    weights = [build_attention(w, layer, shape, merges[i] if merges else
                               mean_merges(layer, shape.num_kv_heads, shape.head_dim),
                               gates[i] if gates else None)
               for i, (w, layer) in enumerate(zip(originals, plan.layers))]
    adapt(model, plan, weights=weights)
    return plan


def _adapted_copy(model, plan: HeadPlan, originals, shape, gates):
    """A deep copy of `model` adapted to `plan` (the original stays untouched for rebuilding)."""
    import copy

    clone = copy.deepcopy(model)
    weights = [build_attention(w, layer, shape, gate=gates[i] if gates else None)
               for i, (w, layer) in enumerate(zip(originals, plan.layers))]
    return adapt(clone, plan, weights=weights)


def read_gates(directory: Path, num_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Gated-attention weights stored in the checkpoint's safetensors files, named
    `edgert.gates.{layer}.weight` [heads, head_dim] and `edgert.gates.{layer}.bias` [heads];
    None when the checkpoint has none."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith("edgert.gates."):
                    found[key] = f.get_tensor(key)
    if not found:
        return None
    try:
        return [(found[f"edgert.gates.{i}.weight"].float(), found[f"edgert.gates.{i}.bias"].float())
                for i in range(num_layers)]
    except KeyError as exc:
        raise PlanError(f"{directory}: gate weights incomplete, missing {exc.args[0]}") from None


# ---- loading for `edgert analyze heads` ---------------------------------------------------

def encoder_loss(model, task: str, uses_token_types: bool) -> Loss:
    """projection_loss on the output the export will have (pooled embedding or hidden states)."""
    from edgert.models.encoders import EncoderExport

    wrapper = EncoderExport(model, task, uses_token_types=uses_token_types)
    return lambda _model, feeds, seed: projection_loss(wrapper, feeds, seed)


def load_for_heads(source: str, calib, calib_size: int):
    """(transformers model, calibration feeds, loss) for scoring the heads of `source`."""
    import json

    from edgert.models.adapters import DECODER_FAMILIES
    from edgert.models.zoo import resolve_source
    from edgert.quant.calib import BUNDLED, load_calibration

    model_source = resolve_source(source)
    if calib is None:
        if model_source.name not in BUNDLED:
            raise EdgertError("scoring heads needs calibration data: give --calib PATH")
        calib = BUNDLED[model_source.name][0]
    config_path = model_source.directory / "config.json"
    model_type = json.loads(config_path.read_text()).get("model_type") if config_path.is_file() else None
    if model_type in DECODER_FAMILIES:
        model, inputs = _load_decoder(model_source)
        loss = next_token_loss
    else:
        from edgert.exporters.export import TorchInputs, quiet_libraries
        from edgert.exporters.hf_encoder import load_encoder

        quiet_libraries()
        encoder = load_encoder(model_source)
        model = encoder.model
        inputs = TorchInputs(encoder, {n: n for n in encoder.input_names}, model_source.name)
        loss = encoder_loss(model, model_source.default_task or "feature-extraction",
                            "token_type_ids" in encoder.input_names)
    model_shape(model)  # fails clearly for families without an adapter
    samples = load_calibration(calib, inputs, size=calib_size)
    return model, samples, loss


def _load_decoder(model_source):
    """A Llama-family causal LM from a local directory, and its calibration inputs."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from edgert.errors import SourceError, first_line
    from edgert.exporters.export import TorchInputs

    try:
        model = AutoModelForCausalLM.from_pretrained(model_source.directory, local_files_only=True,
                                                     attn_implementation="eager").eval()
    except Exception as exc:
        raise SourceError(f"cannot load {model_source.directory}: {first_line(exc)}") from None
    tokenizer_json = None
    if (model_source.directory / "tokenizer.json").is_file():
        tokenizer_json = (model_source.directory / "tokenizer.json").read_text()
    names = ["input_ids", "attention_mask"]
    info = SimpleNamespace(input_names=names, tokenizer_json=tokenizer_json,
                           max_length=model.config.max_position_embeddings)
    return model, TorchInputs(info, {n: n for n in names}, model_source.name)
