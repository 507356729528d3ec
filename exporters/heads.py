"""Head transforms on torch models: pruning (by a plan or by importance, see importance.py),
MHA -> GQA, softmax changes and checkpoint gates, all expressed as a HeadPlan and applied by the
adapters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open

from edgert.errors import CalibrationError, PlanError
from edgert.exporters.importance import Feeds, Loss, head_importance, projection_loss
from edgert.models.adapters import adapt, head_attentions, identity_plan, model_shape, original_weights
from edgert.models.transforms import (GQA_METHODS, build_attention, group_plan, prune_by_score,
                                      svd_merges)
from edgert.plan import CachePolicy, HeadPlan, Softmax


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


def parse_retrieval(text: str) -> float | int:
    """`--retrieval-heads`: a fraction of all kv heads (0.25) or a count (4)."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise PlanError(f"--retrieval-heads takes a fraction (0.25) or a count (4), got {text!r}") from None
        if not 0 <= value <= 1:
            raise PlanError(f"a --retrieval-heads fraction must lie in [0, 1], got {text}")
    if value < 0:
        raise PlanError(f"--retrieval-heads must be >= 0, got {text}")
    return value


def with_softmax(plan: HeadPlan, softmax: Softmax) -> HeadPlan:
    return HeadPlan([replace(layer, softmax=softmax) for layer in plan.layers], plan.head_dim).check()


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
    # Decoders: kv heads keeping a full cache (fraction or count, see HeadPlan.with_windows);
    # the others keep `sink` + `recent` tokens. None keeps the plan's cache policies.
    retrieval: float | int | None = None
    sink: int = 64
    recent: int = 256

    def check(self) -> None:
        if self.gqa_method not in GQA_METHODS:
            raise PlanError(f"unknown gqa method {self.gqa_method!r}; choose one of {', '.join(GQA_METHODS)}")
        if self.prune is not None and not 0 <= self.prune < 1:
            raise PlanError(f"--prune must lie in [0, 1) (pruning every head leaves no model), got {self.prune:g}")
        if self.kv_heads is not None and self.kv_heads < 1:
            raise PlanError(f"--kv-heads must be >= 1, got {self.kv_heads}")
        if self.retrieval is not None:
            CachePolicy("window", self.sink, self.recent).check("--sink/--recent")

    @property
    def needs_calibration(self) -> bool:
        return bool(self.prune) or (self.kv_heads is not None and self.gqa_method == "svd")


def apply_transform(model, transform: Transform, samples: Sequence[Feeds] = (), *,
                    loss: Loss = projection_loss, gates: list | None = None) -> HeadPlan:
    """Adapt `model` in place to the plan `transform` describes; return that plan."""
    transform.check()
    shape = model_shape(model)
    plan = transform.plan or identity_plan(model)
    plan.check_matches(shape.num_layers, shape.num_heads)
    if plan.head_dim is not None and plan.head_dim != shape.head_dim:
        raise PlanError(f"plan was made for heads of size {plan.head_dim}, the model's heads have size "
                        f"{shape.head_dim}: a plan of another model")
    if gates is not None:
        plan = HeadPlan([replace(layer, gated=True) for layer in plan.layers], plan.head_dim).check()
    if transform.needs_calibration and not samples:
        raise CalibrationError("pruning by importance and svd grouping need calibration data (--calib)")
    originals = original_weights(model)
    if transform.prune:
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
            identity = _adapted_copy(model, identity_plan(model), originals, shape, None)
            activations = kv_activations(identity, samples)
            del identity
            merges = [svd_merges(layer, shape.num_kv_heads, k, v, rope=shape.rope)
                      for layer, (k, v) in zip(plan.layers, activations)]
    adapt(model, plan, weights=_attentions(originals, plan, shape, merges, gates))
    if transform.retrieval is not None:
        plan = plan.with_windows(transform.retrieval, transform.sink, transform.recent)
    return plan


def _attentions(originals, plan: HeadPlan, shape, merges=None, gates=None) -> list:
    """One HeadAttention per layer (merges: per layer, None for mean pooling)."""
    return [build_attention(w, layer, shape, merges[i] if merges else None, gates[i] if gates else None)
            for i, (w, layer) in enumerate(zip(originals, plan.layers))]


def _adapted_copy(model, plan: HeadPlan, originals, shape, gates):
    """A deep copy of `model` adapted to `plan` (the original stays untouched for rebuilding)."""
    return adapt(copy.deepcopy(model), plan, weights=_attentions(originals, plan, shape, gates=gates))


def read_gates(directory: Path, num_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Gated-attention weights stored in the checkpoint's safetensors files, named
    `edgert.gates.{layer}.weight` [heads, head_dim] and `edgert.gates.{layer}.bias` [heads];
    None when the checkpoint has none."""
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
