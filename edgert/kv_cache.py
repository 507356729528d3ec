"""Per-head KV cache of an exported decoder: its layout (from the manifest) and the
preallocated buffers the Generator fills.

Every layer's kv heads are ordered retrieval first (the exporter permutes the projections
to make it so). Retrieval heads keep every token: one buffer [B, r, capacity, d] whose slot t
holds sequence position t of the (left-padded) batch. Streaming heads keep `sink` first
tokens plus the `recent` latest: one buffer [B, s, sink + recent, d]; slots [0, sink) hold
the sinks, slots [sink, sink + recent) are a ring that the newest token overwrites in place.
Keys are cached with RoPE already applied at their original positions, so a kept key keeps
the position it was written at (StreamingLLM re-rotates keys to their cache slot; edgert does
not, which is what makes a window covering the whole context equal full attention exactly).

The graph never holds the cache: it reads it as inputs and outputs only the new tokens'
keys and values, which `KVCache.append` writes into the buffers (no reallocation, no copy of
the past per token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgert.errors import ModelLoadError, PlanError
from edgert.plan import MAX_WINDOW_TOKENS

# Additive masks are built in the graph from these integer inputs.
INPUT_IDS, POSITION_IDS, ATTENTION_MASK = "input_ids", "position_ids", "attention_mask"
PAST_MASK = "past_mask"  # [B, C] int64: 1 where a retrieval slot holds a real token
WINDOW_POSITIONS = "window_positions"  # [B, W] int64: position held by each streaming slot, -1 if none
LOGITS = "logits"  # [B, vocab]: next-token logits after the last new token


def past_name(layer: int, part: str, kind: str) -> str:
    """Graph input holding one layer's cached keys or values: past.{layer}.{retrieval|streaming}.{key|value}."""
    return f"past.{layer}.{part}.{kind}"


def new_name(layer: int, kind: str) -> str:
    """Graph output holding one layer's new keys or values [B, kv, S, d] (RoPE applied)."""
    return f"new.{layer}.{kind}"


@dataclass(frozen=True)
class CacheLayout:
    """Per layer, how many kv heads keep everything (retrieval) and how many keep a window
    (streaming); the window's sink and recent sizes; the head size."""

    head_dim: int
    retrieval: tuple[int, ...]
    streaming: tuple[int, ...]
    sink: int = 0
    recent: int = 0

    @property
    def num_layers(self) -> int:
        return len(self.retrieval)

    @property
    def window(self) -> int:
        """Slots of every streaming cache (0 when no layer has streaming heads)."""
        return self.sink + self.recent if any(self.streaming) else 0

    @classmethod
    def from_plan(cls, plan, head_dim: int) -> CacheLayout:
        """The layout of a HeadPlan whose kv heads are already ordered retrieval first."""
        retrieval, streaming, windows = [], [], set()
        for i, layer in enumerate(plan.layers):
            kinds = [p.kind for p in layer.cache]
            r = kinds.count("full")
            if kinds != ["full"] * r + ["window"] * (len(kinds) - r):
                raise PlanError(f"layer {i}: kv heads must be ordered full first (export reorders them)")
            windows |= {(p.sink, p.recent) for p in layer.cache if p.kind == "window"}
            retrieval.append(r)
            streaming.append(len(kinds) - r)
        if len(windows) > 1:
            shown = ", ".join(f"sink {s} + recent {r}" for s, r in sorted(windows))
            raise PlanError(f"every window cache of a decoder must have the same sink and recent "
                            f"(one streaming buffer shape); this plan has {shown}")
        sink, recent = windows.pop() if windows else (0, 0)
        return cls(head_dim, tuple(retrieval), tuple(streaming), sink, recent)

    def to_dict(self) -> dict:
        return {"head_dim": self.head_dim, "retrieval": list(self.retrieval),
                "streaming": list(self.streaming), "sink": self.sink, "recent": self.recent}

    @classmethod
    def from_dict(cls, data: object) -> CacheLayout:
        """Read the manifest's `decoder.cache`; ModelLoadError names the first bad field."""
        if not isinstance(data, dict):
            raise ModelLoadError("manifest decoder.cache must be an object")
        try:
            layout = cls(data["head_dim"], tuple(data["retrieval"]), tuple(data["streaming"]),
                         data.get("sink", 0), data.get("recent", 0))
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"manifest decoder.cache is malformed: missing or bad {exc}") from None
        counts = (layout.head_dim, layout.sink, layout.recent, *layout.retrieval, *layout.streaming)
        if (not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts)
                or layout.head_dim < 1 or len(layout.retrieval) != len(layout.streaming)
                or not layout.retrieval or (any(layout.streaming) and layout.recent < 1)
                or layout.sink + layout.recent > MAX_WINDOW_TOKENS):
            raise ModelLoadError("manifest decoder.cache holds impossible sizes")
        return layout

    def input_names(self) -> list[str]:
        """The graph inputs, in order."""
        names = [INPUT_IDS, POSITION_IDS, ATTENTION_MASK]
        names += [PAST_MASK] if any(self.retrieval) else []
        names += [WINDOW_POSITIONS] if any(self.streaming) else []
        for i, (r, s) in enumerate(zip(self.retrieval, self.streaming)):
            for part, count in (("retrieval", r), ("streaming", s)):
                if count:
                    names += [past_name(i, part, "key"), past_name(i, part, "value")]
        return names

    def output_names(self) -> list[str]:
        names = [LOGITS]
        for i, (r, s) in enumerate(zip(self.retrieval, self.streaming)):
            if r + s:
                names += [new_name(i, "key"), new_name(i, "value")]
        return names

    def cache_bytes(self, batch: int, context: int, itemsize: int = 4) -> int:
        """Bytes of keys and values held for `batch` sequences of `context` tokens."""
        tokens = sum(self.retrieval) * context + sum(self.streaming) * min(context, self.window)
        return 2 * batch * tokens * self.head_dim * itemsize


class KVCache:
    """Preallocated key/value buffers for `batch` sequences of at most `capacity` slots.

    zeros(shape, dtype) allocates the key/value buffers: numpy's by default; torch-side decoding
    passes one that allocates device tensors (the masks stay numpy arrays)."""

    def __init__(self, layout: CacheLayout, batch: int, capacity: int, dtype=np.float32, zeros=np.zeros):
        self.layout, self.batch, self.capacity = layout, batch, capacity
        d, window = layout.head_dim, layout.window
        self.retrieval = [(zeros((batch, r, capacity, d), dtype), zeros((batch, r, capacity, d), dtype))
                          if r else None for r in layout.retrieval]
        self.streaming = [(zeros((batch, s, window, d), dtype), zeros((batch, s, window, d), dtype))
                          if s else None for s in layout.streaming]
        self.past_mask = np.zeros((batch, capacity), np.int64)
        self.window_positions = np.full((batch, window), -1, np.int64)
        self.length = 0  # slots of the retrieval buffers written so far

    def nbytes(self) -> int:
        """Exact bytes of the key and value buffers."""
        return sum(a.nbytes for pair in self.retrieval + self.streaming if pair for a in pair)

    def feeds(self, *, compact: bool, contiguous=np.ascontiguousarray) -> dict[str, np.ndarray]:
        """The cache inputs of the next step. compact=False hands ONNX Runtime the whole
        buffers (no copy; unwritten slots are masked), which suits one-token steps;
        compact=True hands it contiguous copies of the written slots only, which suits
        prefill chunks, whose attention cost grows with the slots they read. contiguous makes
        those copies of the key/value slices (torch-side decoding keeps device views instead)."""
        used = max(self.length, 1) if compact else self.capacity
        feeds = {}
        if any(self.layout.retrieval):
            feeds[PAST_MASK] = np.ascontiguousarray(self.past_mask[:, :used])
        if any(self.layout.streaming):
            feeds[WINDOW_POSITIONS] = self.window_positions
        for i, (retrieval, streaming) in enumerate(zip(self.retrieval, self.streaming)):
            if retrieval:
                for kind, buffer in zip(("key", "value"), retrieval):
                    feeds[past_name(i, "retrieval", kind)] = contiguous(buffer[:, :, :used]) if compact else buffer
            if streaming:
                feeds[past_name(i, "streaming", "key")] = streaming[0]
                feeds[past_name(i, "streaming", "value")] = streaming[1]
        return feeds

    def append(self, outputs: dict[str, np.ndarray], positions: np.ndarray, token_mask: np.ndarray) -> None:
        """Write the new keys/values of S tokens (positions, token_mask: [B, S]) into the buffers."""
        steps = positions.shape[1]
        start, end = self.length, self.length + steps
        if end > self.capacity:
            raise ValueError(f"KV cache full: {end} slots needed, {self.capacity} allocated")
        self.past_mask[:, start:end] = token_mask
        window_writes = self._window_writes(positions, token_mask) if any(self.layout.streaming) else []
        for i, (retrieval, streaming) in enumerate(zip(self.retrieval, self.streaming)):
            if not (retrieval or streaming):
                continue
            keys, values = outputs[new_name(i, "key")], outputs[new_name(i, "value")]
            r = self.layout.retrieval[i]
            if retrieval:
                retrieval[0][:, :, start:end] = keys[:, :r]
                retrieval[1][:, :, start:end] = values[:, :r]
            if streaming:
                for b, columns, slots in window_writes:
                    streaming[0][b][:, slots] = keys[b, r:][:, columns]
                    streaming[1][b][:, slots] = values[b, r:][:, columns]
        for b, columns, slots in window_writes:
            self.window_positions[b, slots] = positions[b, columns]
        self.length = end

    def _window_writes(self, positions: np.ndarray, token_mask: np.ndarray) -> list[tuple]:
        """Per batch row, (row, new-token columns, window slots) of the tokens that survive in the
        streaming window: the sinks and the last `recent` real tokens of the step (rows differ
        where left padding shifts their positions). The same for every layer."""
        sink, recent = self.layout.sink, self.layout.recent
        slots = np.where(positions < sink, positions, sink + (positions - sink) % recent)
        keep = (token_mask > 0) & ((positions < sink) | (positions >= positions.max(axis=1, keepdims=True) - recent + 1))
        writes = []
        for b in range(self.batch):
            columns = np.flatnonzero(keep[b])
            writes.append((b, columns, slots[b, columns]))
        return writes

    def reset(self) -> None:
        """Forget every token (the buffers stay allocated)."""
        self.past_mask[:] = 0
        self.window_positions[:] = -1
        self.length = 0
