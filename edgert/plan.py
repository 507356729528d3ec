"""HeadPlan (what happens to every attention head) and the ONNX manifest.

Plain dataclasses with a JSON round trip and no torch: analysis writes a plan, transforms
apply it, the exporter stores it in the manifest, the runtime reads it back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgert.errors import PlanError

MANIFEST_KEY = "edgert"  # ONNX metadata_props key holding the manifest JSON
TOKENIZER_KEY = "edgert.tokenizer"  # metadata_props key holding a tokenizers.json string
PLAN_FORMAT = 1


@dataclass(frozen=True)
class Softmax:
    """Softmax of one layer: `standard`, or `clipped` = clip((zeta - gamma) * softmax + gamma, 0, 1)."""

    kind: str = "standard"
    gamma: float | None = None
    zeta: float | None = None

    def check(self, where: str) -> None:
        if self.kind == "standard":
            if self.gamma is not None or self.zeta is not None:
                raise PlanError(f"{where}: standard softmax takes no gamma/zeta")
        elif self.kind == "clipped":
            if self.gamma is None or self.zeta is None:
                raise PlanError(f"{where}: clipped softmax needs gamma and zeta")
            if not self.gamma < 0:
                raise PlanError(f"{where}: clipped softmax needs gamma < 0, got {self.gamma}")
            if not self.zeta >= 1:
                raise PlanError(f"{where}: clipped softmax needs zeta >= 1, got {self.zeta}")
        else:
            raise PlanError(f"{where}: unknown softmax kind {self.kind!r} (standard, clipped)")


@dataclass(frozen=True)
class CachePolicy:
    """KV-cache policy of one kv head: `full` keeps every token; `window` keeps
    `sink` first tokens plus the `recent` latest ones."""

    kind: str = "full"
    sink: int = 0
    recent: int = 0

    def check(self, where: str) -> None:
        if self.kind == "full":
            if self.sink or self.recent:
                raise PlanError(f"{where}: a full cache takes no sink/recent")
        elif self.kind == "window":
            if self.sink < 0 or self.recent < 1:
                raise PlanError(f"{where}: window cache needs sink >= 0 and recent >= 1")
        else:
            raise PlanError(f"{where}: unknown cache policy {self.kind!r} (full, window)")

    def tokens(self, context: int) -> int:
        """Tokens this head holds after `context` tokens."""
        return context if self.kind == "full" else min(context, self.sink + self.recent)


@dataclass
class LayerPlan:
    """One attention layer.

    num_heads: query heads of the original model; kept_heads: indices into them, in
    order; kv_heads: for each kept head, the kv head it reads; num_kv_heads: kv heads
    after the plan; cache: one policy per kv head; gated: per-head output gate.
    """

    num_heads: int
    kept_heads: list[int]
    kv_heads: list[int]
    num_kv_heads: int
    softmax: Softmax = field(default_factory=Softmax)
    gated: bool = False
    cache: list[CachePolicy] = field(default_factory=list)

    @classmethod
    def full(cls, num_heads: int, num_kv_heads: int | None = None) -> LayerPlan:
        """All heads kept; GQA groups of consecutive query heads as in Llama."""
        num_kv_heads = num_kv_heads or num_heads
        group = num_heads // num_kv_heads
        return cls(
            num_heads=num_heads,
            kept_heads=list(range(num_heads)),
            kv_heads=[h // group for h in range(num_heads)],
            num_kv_heads=num_kv_heads,
            cache=[CachePolicy() for _ in range(num_kv_heads)],
        )

    def check(self, index: int) -> None:
        where = f"layer {index}"
        if self.num_heads < 1:
            raise PlanError(f"{where}: num_heads must be >= 1")
        if len(set(self.kept_heads)) != len(self.kept_heads):
            raise PlanError(f"{where}: kept_heads has duplicates")
        if any(not 0 <= h < self.num_heads for h in self.kept_heads):
            raise PlanError(f"{where}: kept_heads must lie in [0, {self.num_heads})")
        if len(self.kv_heads) != len(self.kept_heads):
            raise PlanError(f"{where}: kv_heads needs one entry per kept head")
        if self.kept_heads and self.num_kv_heads < 1:
            raise PlanError(f"{where}: a layer with heads needs num_kv_heads >= 1")
        if any(not 0 <= k < self.num_kv_heads for k in self.kv_heads):
            raise PlanError(f"{where}: kv_heads must lie in [0, {self.num_kv_heads})")
        if len(self.cache) != self.num_kv_heads:
            raise PlanError(f"{where}: cache needs one policy per kv head ({self.num_kv_heads})")
        self.softmax.check(where)
        for k, policy in enumerate(self.cache):
            policy.check(f"{where} kv head {k}")


@dataclass
class HeadPlan:
    """Per-layer head plan of a whole model."""

    layers: list[LayerPlan]
    head_dim: int | None = None

    @classmethod
    def full(cls, num_layers: int, num_heads: int, num_kv_heads: int | None = None,
             head_dim: int | None = None) -> HeadPlan:
        """The identity plan: every head kept, standard softmax, full caches."""
        return cls([LayerPlan.full(num_heads, num_kv_heads) for _ in range(num_layers)], head_dim)

    def check(self) -> HeadPlan:
        """Raise PlanError if the plan is inconsistent; return self."""
        if not self.layers:
            raise PlanError("plan has no layers")
        for i, layer in enumerate(self.layers):
            layer.check(i)
        return self

    def check_matches(self, num_layers: int, num_heads: int) -> None:
        """Raise PlanError unless the plan was made for a model of this shape."""
        if len(self.layers) != num_layers:
            raise PlanError(f"plan has {len(self.layers)} layers, model has {num_layers}")
        for i, layer in enumerate(self.layers):
            if layer.num_heads != num_heads:
                raise PlanError(f"plan layer {i} has {layer.num_heads} heads, model has {num_heads}")

    @property
    def kept_heads(self) -> int:
        return sum(len(layer.kept_heads) for layer in self.layers)

    @property
    def original_heads(self) -> int:
        return sum(layer.num_heads for layer in self.layers)

    def cache_tokens(self, context: int) -> int:
        """Cached (token, kv head) pairs per sequence after `context` tokens, all layers."""
        return sum(p.tokens(context) for layer in self.layers for p in layer.cache)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadPlan:
        """Build and check a plan from its JSON form."""
        try:
            if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
                raise PlanError(f"unsupported plan format {data.get('format')!r}")
            layers = [
                LayerPlan(
                    num_heads=int(ld["num_heads"]),
                    kept_heads=[int(h) for h in ld["kept_heads"]],
                    kv_heads=[int(k) for k in ld["kv_heads"]],
                    num_kv_heads=int(ld["num_kv_heads"]),
                    softmax=Softmax(**ld.get("softmax", {})),
                    gated=bool(ld.get("gated", False)),
                    cache=[CachePolicy(**c) for c in ld.get("cache", [])],
                )
                for ld in data["layers"]
            ]
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed plan: {type(exc).__name__}: {exc}") from None
        return cls(layers, data.get("head_dim")).check()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> HeadPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PlanError("plan JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        from edgert._io import write_text_atomic

        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> HeadPlan:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file not found: {path}")
        return cls.from_json(path.read_text())

    @classmethod
    def from_duo_attention_tsv(cls, path: str | Path, num_heads: int, *, retrieval_fraction: float,
                               sink: int = 64, recent: int = 256) -> HeadPlan:
        """Load DuoAttention's `full_attention_heads.tsv` (one row per layer, one gate
        per kv head): the `retrieval_fraction` highest gates keep a full cache, the rest
        become streaming heads with `sink` + `recent` tokens."""
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"pattern file not found: {path}")
        if not 0 <= retrieval_fraction <= 1:
            raise PlanError("retrieval_fraction must lie in [0, 1]")
        try:
            rows = [[float(v) for v in line.split("\t")]
                    for line in path.read_text().splitlines() if line.strip()]
        except ValueError as exc:
            raise PlanError(f"{path}: not a tab-separated table of floats ({exc})") from None
        if not rows or len({len(r) for r in rows}) != 1:
            raise PlanError(f"{path}: rows must be non-empty and of equal length")
        num_kv = len(rows[0])
        if num_heads % num_kv:
            raise PlanError(f"{path}: {num_kv} kv heads do not divide {num_heads} query heads")
        gates = sorted(v for r in rows for v in r)
        keep = math.ceil(retrieval_fraction * len(gates))
        threshold = gates[len(gates) - keep] if keep else math.inf
        layers = []
        for row in rows:
            layer = LayerPlan.full(num_heads, num_kv)
            layer.cache = [CachePolicy() if g >= threshold else CachePolicy("window", sink, recent)
                           for g in row]
            layers.append(layer)
        return cls(layers).check()


@dataclass
class Manifest:
    """Export facts stored as JSON in the ONNX file's metadata_props["edgert"].

    inputs maps input names to roles (input_ids, attention_mask, token_type_ids, ...);
    dims maps symbolic dimension names to roles (batch, sequence); validation maps each
    output to its max abs diff against the source model; text holds tokenizer facts
    (max_length, vocab_size) when a tokenizer travels with the model.
    """

    edgert_version: str
    source: str
    task: str
    opset: int
    inputs: dict[str, str] = field(default_factory=dict)
    dims: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] | None = None
    plan: HeadPlan | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["plan"] = self.plan.to_dict() if self.plan else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        plan = data.pop("plan", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, plan=HeadPlan.from_dict(plan) if plan else None)
