"""HeadPlan (what happens to every attention head) and the ONNX manifest.

Plain dataclasses with a JSON round trip and no torch: analysis writes a plan, transforms
apply it, the exporter stores it in the manifest, the runtime reads it back.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgert._io import input_file, path_argument, write_text_atomic
from edgert.checks import finite_number, shown_value
from edgert.errors import ModelLoadError, PlanError, first_line, shown_path

MANIFEST_KEY = "edgert"  # ONNX metadata_props key holding the manifest JSON
TOKENIZER_KEY = "edgert.tokenizer"  # metadata_props key holding a tokenizers.json string


PLAN_FORMAT = 1
# The most tokens a window cache may keep (sink + recent) where the model's max_length is not
# known: more than any context of the decoder families edgert exports, and an int32.
MAX_WINDOW_TOKENS = 2**24
# Plan files and gate tables are small (a plan of 128 layers x 128 heads is ~1.2 MB); reading
# a bigger file would take memory in proportion before its shape could be checked.
MAX_TEXT_BYTES = 16 * 2**20


_TYPE_WORDS = {type(None): "null", bool: "a boolean", str: "a string", list: "a list",
               dict: "an object", int: "an integer", float: "a number"}


def _kind(value: object) -> str:
    """How a wrong value is named in a message: JSON's word for its type, never its contents."""
    return _TYPE_WORDS.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value: object, what: str, minimum: int | None = None) -> None:
    if not _is_int(value):
        raise PlanError(f"{what} must be an integer, got {_kind(value)}")
    if minimum is not None and value < minimum:
        raise PlanError(f"{what} must be >= {minimum}, got {shown_value(value)}")


def _check_int_list(value: object, what: str) -> None:
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise PlanError(f"{what} must be a list of integers, got {_kind(value)}")


def _check_object(value: object, what: str) -> None:
    if not isinstance(value, dict):
        raise PlanError(f"{what} must be an object, got {_kind(value)}")


def _read_text(path: object, what: str) -> str:
    """The UTF-8 text of a small file (at most MAX_TEXT_BYTES); PlanError naming it otherwise."""
    path = input_file(path, what, PlanError)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise PlanError(f"cannot read {what} {shown_path(path)}: {exc.strerror or exc}") from None
    if len(data) > MAX_TEXT_BYTES:
        raise PlanError(f"{what} {shown_path(path)} is larger than {MAX_TEXT_BYTES // 2**20} MiB; "
                        f"a {what} is far smaller")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"{what} {shown_path(path)} is not UTF-8 text") from None


@dataclass(frozen=True)
class Softmax:
    """Softmax of one layer: `standard`, or `clipped` = clip((zeta - gamma) * softmax + gamma, 0, 1)."""

    kind: str = "standard"
    gamma: float | None = None
    zeta: float | None = None

    def check(self, where: str) -> None:
        if not isinstance(self.kind, str):
            raise PlanError(f"{where}: softmax kind must be a string, got {_kind(self.kind)}")
        for name in ("gamma", "zeta"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                      or not math.isfinite(value)):
                raise PlanError(f"{where}: softmax {name} must be a finite number, got "
                                + (str(value) if isinstance(value, float) else _kind(value)))
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

    def check(self, where: str, max_length: int | None = None) -> None:
        """PlanError unless the policy is well formed and its window fits `max_length` tokens
        (the model's limit; when not known, MAX_WINDOW_TOKENS)."""
        if not isinstance(self.kind, str):
            raise PlanError(f"{where}: cache kind must be a string, got {_kind(self.kind)}")
        _check_int(self.sink, f"{where}: sink")
        _check_int(self.recent, f"{where}: recent")
        if self.kind == "full":
            if self.sink or self.recent:
                raise PlanError(f"{where}: a full cache takes no sink/recent")
        elif self.kind == "window":
            if self.sink < 0 or self.recent < 1:
                raise PlanError(f"{where}: window cache needs sink >= 0 and recent >= 1")
            limit = MAX_WINDOW_TOKENS if max_length is None else max_length
            if self.sink + self.recent > limit:
                whose = (f"the model's max_length ({max_length})" if max_length is not None
                         else f"the {MAX_WINDOW_TOKENS} tokens a window may keep")
                raise PlanError(f"{where}: a window of sink {shown_value(self.sink)} + recent "
                                f"{shown_value(self.recent)} tokens "
                                f"is longer than {whose}")
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
        _check_int(num_heads, "num_heads", 1)
        num_kv_heads = num_kv_heads or num_heads
        _check_int(num_kv_heads, "num_kv_heads", 1)
        if num_heads % num_kv_heads:
            raise PlanError(f"{num_kv_heads} kv heads do not divide {num_heads} query heads")
        group = num_heads // num_kv_heads
        return cls(
            num_heads=num_heads,
            kept_heads=list(range(num_heads)),
            kv_heads=[h // group for h in range(num_heads)],
            num_kv_heads=num_kv_heads,
            cache=[CachePolicy() for _ in range(num_kv_heads)],
        )

    def check(self, index: int, max_length: int | None = None) -> None:
        where = f"layer {index}"
        _check_int(self.num_heads, f"{where}: num_heads", 1)
        _check_int_list(self.kept_heads, f"{where}: kept_heads")
        _check_int_list(self.kv_heads, f"{where}: kv_heads")
        _check_int(self.num_kv_heads, f"{where}: num_kv_heads", 0)
        if not isinstance(self.softmax, Softmax):
            raise PlanError(f"{where}: softmax must be a Softmax, got {_kind(self.softmax)}")
        if not isinstance(self.gated, bool):
            raise PlanError(f"{where}: gated must be true or false, got {_kind(self.gated)}")
        if not isinstance(self.cache, list) or not all(isinstance(c, CachePolicy) for c in self.cache):
            raise PlanError(f"{where}: cache must be a list of cache policies, got {_kind(self.cache)}")
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
            policy.check(f"{where} kv head {k}", max_length)


@dataclass
class HeadPlan:
    """Per-layer head plan of a whole model."""

    layers: list[LayerPlan]
    head_dim: int | None = None

    @classmethod
    def full(cls, num_layers: int, num_heads: int, num_kv_heads: int | None = None,
             head_dim: int | None = None) -> HeadPlan:
        """The identity plan: every head kept, standard softmax, full caches."""
        _check_int(num_layers, "num_layers", 1)
        return cls([LayerPlan.full(num_heads, num_kv_heads) for _ in range(num_layers)], head_dim)

    def check(self, max_length: int | None = None) -> HeadPlan:
        """Raise PlanError if the plan is inconsistent, or keeps windows longer than
        `max_length` tokens (the model's limit, when known); return self."""
        if not isinstance(self.layers, list) or not all(isinstance(x, LayerPlan) for x in self.layers):
            raise PlanError(f"plan layers must be a list of LayerPlan, got {_kind(self.layers)}")
        if not self.layers:
            raise PlanError("plan has no layers")
        if self.head_dim is not None:
            _check_int(self.head_dim, "head_dim", 1)
        if max_length is not None:
            _check_int(max_length, "max_length", 1)
        for i, layer in enumerate(self.layers):
            layer.check(i, max_length)
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

    def with_windows(self, retrieval: float | int, sink: int, recent: int,
                     scores: list[list[float]] | None = None, *, max_length: int | None = None) -> HeadPlan:
        """A copy where `retrieval` kv heads of the whole model keep a full cache and every
        other kv head keeps `sink` first plus `recent` latest tokens (at most `max_length`
        together, the model's limit when known). retrieval: a fraction of all kv heads (float
        in [0, 1]) or a count (int). Retrieval heads are chosen globally, highest `scores` (a
        finite number per layer and kv head) first; without scores, kv head 0 of every layer,
        then kv head 1, and so on (a placeholder order, not a judgement of the heads)."""
        self.check()
        total = sum(layer.num_kv_heads for layer in self.layers)
        if isinstance(retrieval, bool) or not isinstance(retrieval, numbers.Real):
            raise PlanError(f"retrieval heads must be a fraction or a count, got {_kind(retrieval)}")
        if isinstance(retrieval, numbers.Integral):
            count = int(retrieval)
        else:
            count = round(finite_number(retrieval, "a retrieval fraction", low=0, high=1, error=PlanError) * total)
        if not 0 <= count <= total:
            raise PlanError(f"the plan asks for {count} retrieval heads; the model has {total} kv heads")
        window = CachePolicy("window", sink, recent)
        window.check("window cache", max_length)
        heads = [(layer_index, k) for layer_index, layer in enumerate(self.layers)
                 for k in range(layer.num_kv_heads)]
        if scores is None:
            heads.sort(key=lambda lk: (lk[1], lk[0]))
        else:
            table = self._check_scores(scores)
            heads.sort(key=lambda lk: -table[lk[0]][lk[1]])
        full = set(heads[:count])
        layers = [replace(layer, cache=[CachePolicy() if (i, k) in full else window
                                        for k in range(layer.num_kv_heads)])
                  for i, layer in enumerate(self.layers)]
        return HeadPlan(layers, self.head_dim).check(max_length)

    def _check_scores(self, scores: object) -> list[list[float]]:
        """`scores` as floats, one row per layer of one finite number per kv head; PlanError otherwise."""
        shape = [layer.num_kv_heads for layer in self.layers]
        rows = scores.tolist() if hasattr(scores, "tolist") else scores
        if (not isinstance(rows, (list, tuple)) or len(rows) != len(shape)
                or any(not isinstance(row, (list, tuple)) or len(row) != n for row, n in zip(rows, shape))):
            raise PlanError(f"scores must hold one row per layer ({len(shape)}) of one number per kv head "
                            f"({', '.join(map(str, sorted(set(shape))))})")
        return [[finite_number(v, f"score of layer {i} kv head {k}", error=PlanError) for k, v in enumerate(row)]
                for i, row in enumerate(rows)]

    @property
    def retrieval_heads(self) -> int:
        """kv heads keeping a full cache, all layers."""
        return sum(p.kind == "full" for layer in self.layers for p in layer.cache)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadPlan:
        """Build and check a plan from its JSON form; PlanError names the first bad field."""
        _check_object(data, "plan")
        fmt = data.get("format", PLAN_FORMAT)
        if not _is_int(fmt) or fmt != PLAN_FORMAT:
            raise PlanError(f"unsupported plan format {fmt!r} (this edgert reads format {PLAN_FORMAT})"
                            if isinstance(fmt, (int, float, str)) else
                            f"plan format must be an integer, got {_kind(fmt)}")
        if "layers" not in data:
            raise PlanError("malformed plan: no 'layers'")
        if not isinstance(data["layers"], list):
            raise PlanError(f"malformed plan: 'layers' must be a list, got {_kind(data['layers'])}")
        layers = [_layer_from_dict(ld, i) for i, ld in enumerate(data["layers"])]
        return cls(layers, data.get("head_dim")).check()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> HeadPlan:
        """Parse and check a plan from JSON text."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise PlanError(f"plan JSON must be a string, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8 bytes, deep nesting
            raise PlanError(f"plan is not valid JSON: {first_line(exc)}") from None
        if not isinstance(data, dict):
            raise PlanError(f"plan JSON must be an object, got {_kind(data)}")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically."""
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> HeadPlan:
        """Read and check a plan JSON file."""
        return cls.from_json(_read_text(path_argument(path, "plan path", PlanError), "plan file"))

    @classmethod
    def from_duo_attention_tsv(cls, path: str | Path, num_heads: int, *, retrieval_fraction: float,
                               sink: int = 64, recent: int = 256) -> HeadPlan:
        """Load DuoAttention's `full_attention_heads.tsv` (one row per layer, one gate
        per kv head): the `retrieval_fraction` highest gates keep a full cache, the rest
        become streaming heads with `sink` + `recent` tokens."""
        path = path_argument(path, "pattern path", PlanError)
        _check_int(num_heads, "num_heads", 1)
        _check_int(sink, "sink", 0)
        _check_int(recent, "recent", 1)
        if (isinstance(retrieval_fraction, bool) or not isinstance(retrieval_fraction, numbers.Real)
                or not 0 <= retrieval_fraction <= 1):
            raise PlanError("retrieval_fraction must be a number in [0, 1]")
        rows = read_gate_table(path)
        num_kv = len(rows[0])
        if num_heads % num_kv:
            raise PlanError(f"{shown_path(path)}: {num_kv} kv heads do not divide {num_heads} query heads")
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


def read_gate_table(path: str | Path) -> list[list[float]]:
    """The rows of a DuoAttention `full_attention_heads.tsv` (one row per layer, one
    tab-separated value per kv head); PlanError unless it is a non-empty, rectangular
    table of finite numbers."""
    path = path_argument(path, "pattern path", PlanError)
    text = _read_text(path, "pattern file")
    try:
        rows = [[float(v) for v in line.split("\t")] for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise PlanError(f"{shown_path(path)}: not a tab-separated table of floats ({exc})") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise PlanError(f"{shown_path(path)}: rows must be non-empty and of equal length")
    if not all(math.isfinite(v) for r in rows for v in r):
        raise PlanError(f"{shown_path(path)}: gates must be finite numbers")
    return rows


@dataclass
class Manifest:
    """Export facts stored as JSON in the ONNX file's metadata_props["edgert"].

    inputs maps input names to roles (input_ids, attention_mask, token_type_ids, ...);
    dims maps symbolic dimension names to roles (batch, sequence); validation maps each
    output to its max abs diff against the source model; text holds tokenizer facts
    (max_length, vocab_size) when a tokenizer travels with the model; decoder holds what a
    text-generation graph's runtime needs (edgert.generator reads it).
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
    decoder: dict[str, Any] | None = None  # text-generation graphs: cache layout, limits, special tokens

    def to_json(self) -> str:
        data = asdict(self)
        data["plan"] = self.plan.to_dict() if self.plan else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest; ModelLoadError (PlanError for its plan) names the first bad field.
        Unknown fields are ignored, so newer manifests still load."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ModelLoadError(f"manifest is not valid JSON: {first_line(exc)}") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"manifest must be a JSON object, got {_kind(data)}")
        for name, kinds in MANIFEST_FIELDS.items():
            if name not in data:
                if name in MANIFEST_REQUIRED:
                    raise ModelLoadError(f"manifest has no {name!r}")
                continue
            if not isinstance(data[name], kinds) or isinstance(data[name], bool):
                raise ModelLoadError(f"manifest field {name!r} must be "
                                     f"{' or '.join(_TYPE_WORDS[k] for k in kinds)}, got {_kind(data[name])}")
        for name in ("inputs", "dims"):
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.get(name, {}).items()):
                raise ModelLoadError(f"manifest field {name!r} must map names to role strings")
        for name, value in (data.get("text") or {}).items():
            if name in ("max_length", "vocab_size") and not (_is_int(value) and value >= 1):
                raise ModelLoadError(f"manifest text.{name} must be an integer >= 1, got {_kind(value)}")
        _check_decoder_fields(data.get("decoder") or {})
        plan = data.get("plan")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "plan"}
        return cls(**known, plan=HeadPlan.from_dict(plan) if plan else None)


# The manifest fields a reader relies on and the JSON types each may have.
MANIFEST_FIELDS: dict[str, tuple[type, ...]] = {
    "edgert_version": (str,), "source": (str,), "task": (str,), "opset": (int,),
    "inputs": (dict,), "dims": (dict,), "validation": (dict,), "text": (dict, type(None)),
    "plan": (dict, type(None)), "extra": (dict,), "decoder": (dict, type(None)),
}
MANIFEST_REQUIRED = ("edgert_version", "source", "task", "opset")


def _check_decoder_fields(decoder: dict) -> None:
    """ModelLoadError unless the manifest's decoder limits and special token ids are integers."""
    for name, value in decoder.items():
        if name in ("max_length", "vocab_size") and not (_is_int(value) and value >= 1):
            raise ModelLoadError(f"manifest decoder.{name} must be an integer >= 1, got {_kind(value)}")
        if name in ("bos_token_id", "pad_token_id") and value is not None and not (_is_int(value) and value >= 0):
            raise ModelLoadError(f"manifest decoder.{name} must be an integer >= 0 or null, got {_kind(value)}")
        if name == "eos_token_ids" and not (isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)):
            raise ModelLoadError(f"manifest decoder.eos_token_ids must be a list of integers >= 0, got {_kind(value)}")


def _layer_from_dict(data: object, index: int) -> LayerPlan:
    """One plan layer from its JSON form (LayerPlan.check does the rest)."""
    where = f"layer {index}"
    _check_object(data, where)
    missing = [k for k in ("num_heads", "kept_heads", "kv_heads", "num_kv_heads") if k not in data]
    if missing:
        raise PlanError(f"malformed plan: {where} has no {missing[0]!r}")
    softmax = data.get("softmax", {})
    _check_object(softmax, f"{where}: softmax")
    cache = data.get("cache", [])
    if not isinstance(cache, list):
        raise PlanError(f"{where}: cache must be a list, got {_kind(cache)}")
    for k, policy in enumerate(cache):
        _check_object(policy, f"{where} kv head {k}: cache policy")
    try:
        return LayerPlan(num_heads=data["num_heads"], kept_heads=data["kept_heads"],
                         kv_heads=data["kv_heads"], num_kv_heads=data["num_kv_heads"],
                         softmax=Softmax(**softmax), gated=data.get("gated", False),
                         cache=[CachePolicy(**c) for c in cache])
    except TypeError as exc:  # an unknown field in softmax or a cache policy
        raise PlanError(f"malformed plan: {where}: {first_line(exc)}") from None
