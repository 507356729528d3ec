"""Build HeadAttention weights from a model's original projections and a HeadPlan.

Pruning slices the q/k/v/o projections (nothing is masked). Regrouping (MHA -> GQA) merges
the original kv heads that feed one new kv head; a merge is four d x d matrices per original
kv head g (`KvMerge`):

    k' = sum_g P_g k_g     q_h' = Q_g q_h   (query heads that read g)
    v' = sum_g R_g v_g     W_o,h' = W_o,h S_g

Mean pooling (Ainslie et al. 2023) is P = R = I/|G|, Q = S = I. The low-rank method (Yu et al.
2024) takes P, Q, R, S from an SVD of calibration activations (`svd_merges`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from edgert.errors import PlanError
from edgert.models.attention import HeadAttention
from edgert.plan import HeadPlan, LayerPlan

GQA_METHODS = ("mean", "svd")


@dataclass
class KvMerge:
    """How original kv heads (keys of the dicts) fold into one new kv head."""

    key_in: dict[int, torch.Tensor]
    query_fold: dict[int, torch.Tensor]
    value_in: dict[int, torch.Tensor]
    out_fold: dict[int, torch.Tensor]


def original_kv(head: int, num_heads: int, num_kv_heads: int) -> int:
    """The kv head an original query head reads (consecutive groups, as in Llama)."""
    return head // (num_heads // num_kv_heads)


def kv_sources(layer: LayerPlan, num_kv_heads: int) -> list[list[int]]:
    """For each new kv head, the original kv heads read by the kept query heads mapped to it."""
    sources: list[set[int]] = [set() for _ in range(layer.num_kv_heads)]
    for head, kv in zip(layer.kept_heads, layer.kv_heads):
        sources[kv].add(original_kv(head, layer.num_heads, num_kv_heads))
    return [sorted(s) for s in sources]


def mean_merges(layer: LayerPlan, num_kv_heads: int, head_dim: int) -> list[KvMerge]:
    return [_mean_merge(group, head_dim) for group in kv_sources(layer, num_kv_heads)]


def _mean_merge(group: list[int], d: int) -> KvMerge:
    """Average the group's K and V (exact copy for a group of one)."""
    eye = torch.eye(d)
    share = {g: eye / len(group) for g in group}
    same = {g: eye for g in group}
    return KvMerge(share, same, share, same)


def _rows(weight: torch.Tensor | None, index: int, size: int) -> torch.Tensor | None:
    return None if weight is None else weight[index * size:(index + 1) * size]


def build_attention(weights, layer: LayerPlan, shape, merges: Sequence[KvMerge] | None = None,
                    gate: tuple[torch.Tensor, torch.Tensor] | None = None) -> HeadAttention:
    """A HeadAttention for `layer` from one layer's original projections (AttentionWeights).

    merges: one KvMerge per new kv head (None: mean pooling, exact for a plain kv head).
    gate: the checkpoint's (weight [heads, d], bias [heads]) when the plan is gated.
    """
    d = shape.head_dim
    merges = merges if merges is not None else mean_merges(layer, shape.num_kv_heads, d)
    attention = HeadAttention(shape.hidden_size, d, layer, qkv_bias=weights.q_bias is not None,
                              o_bias=weights.o_bias is not None, rope=shape.rope)
    source_of = [original_kv(h, layer.num_heads, shape.num_kv_heads) for h in layer.kept_heads]
    with torch.no_grad():
        q, q_bias, o = [], [], []
        for head, kv, source in zip(layer.kept_heads, layer.kv_heads, source_of):
            fold = merges[kv].query_fold[source]
            q.append(fold @ _rows(weights.q, head, d))
            if weights.q_bias is not None:
                q_bias.append(fold @ _rows(weights.q_bias, head, d))
            o.append(weights.o[:, head * d:(head + 1) * d] @ merges[kv].out_fold[source])
        k, k_bias, v, v_bias = [], [], [], []
        for merge in merges:
            k.append(sum(p @ _rows(weights.k, g, d) for g, p in merge.key_in.items()))
            v.append(sum(r @ _rows(weights.v, g, d) for g, r in merge.value_in.items()))
            if weights.k_bias is not None:
                k_bias.append(sum(p @ _rows(weights.k_bias, g, d) for g, p in merge.key_in.items()))
                v_bias.append(sum(r @ _rows(weights.v_bias, g, d) for g, r in merge.value_in.items()))
        _fill(attention.q_proj, q, q_bias)
        _fill(attention.k_proj, k, k_bias)
        _fill(attention.v_proj, v, v_bias)
        if o:
            attention.o_proj.weight.copy_(torch.cat(o, dim=1))
        if weights.o_bias is not None:
            attention.o_proj.bias.copy_(weights.o_bias)
        if layer.gated:
            if gate is None:
                raise PlanError("the plan is gated but the checkpoint has no gate weights")
            attention.gate_weight.copy_(gate[0][layer.kept_heads])
            attention.gate_bias.copy_(gate[1][layer.kept_heads])
    return attention


def _fill(linear, weight_rows: list[torch.Tensor], bias_rows: list[torch.Tensor]) -> None:
    if weight_rows:
        linear.weight.copy_(torch.cat(weight_rows, dim=0))
        if bias_rows:
            linear.bias.copy_(torch.cat(bias_rows, dim=0))


# ---- plans -------------------------------------------------------------------------------

def prune_plan(plan: HeadPlan, keep: Sequence[Sequence[int]]) -> HeadPlan:
    """Keep only `keep[i]` (original head indices) in layer i; kv heads nobody reads any more
    are dropped and the rest renumbered."""
    if len(keep) != len(plan.layers):
        raise PlanError(f"need a head list per layer ({len(plan.layers)}), got {len(keep)}")
    layers = []
    for i, (layer, kept) in enumerate(zip(plan.layers, keep)):
        kept = sorted(set(int(h) for h in kept))
        if any(h not in layer.kept_heads for h in kept):
            raise PlanError(f"layer {i}: can only keep heads the plan still has")
        old_kv = [layer.kv_heads[layer.kept_heads.index(h)] for h in kept]
        used = sorted(set(old_kv))
        renumber = {k: j for j, k in enumerate(used)}
        layers.append(LayerPlan(layer.num_heads, kept, [renumber[k] for k in old_kv], len(used),
                                layer.softmax, layer.gated, [layer.cache[k] for k in used]))
    return HeadPlan(layers, plan.head_dim).check()


def prune_by_score(plan: HeadPlan, scores: Sequence[Sequence[float]], fraction: float) -> HeadPlan:
    """Drop the `fraction` of all original heads with the lowest scores (ties: later heads
    first). Heads the plan already dropped should score lowest (importance gives them 0), so
    they count towards the fraction."""
    if not 0 <= fraction < 1:
        raise PlanError(f"prune fraction must lie in [0, 1), got {fraction:g}")
    ranked = sorted(((s, layer, head) for layer, row in enumerate(scores) for head, s in enumerate(row)),
                    key=lambda t: (t[0], -t[1], -t[2]))
    drop = {(layer, head) for _, layer, head in ranked[:round(fraction * len(ranked))]}
    keep = [[h for h in layer.kept_heads if (i, h) not in drop] for i, layer in enumerate(plan.layers)]
    return prune_plan(plan, keep)


def group_plan(plan: HeadPlan, kv_heads: int) -> HeadPlan:
    """Map each layer's kept query heads onto `kv_heads` kv heads in consecutive groups."""
    layers = []
    for i, layer in enumerate(plan.layers):
        kept = len(layer.kept_heads)
        if kept == 0:
            layers.append(LayerPlan(layer.num_heads, [], [], 0, layer.softmax, layer.gated, []))
            continue
        if kv_heads < 1 or kept % kv_heads:
            raise PlanError(f"layer {i}: {kv_heads} kv heads do not divide its {kept} kept query heads")
        group = kept // kv_heads
        layers.append(LayerPlan(layer.num_heads, list(layer.kept_heads),
                                [j // group for j in range(kept)], kv_heads, layer.softmax,
                                layer.gated, [layer.cache[0] for _ in range(kv_heads)] if layer.cache
                                else []))
    return HeadPlan(layers, plan.head_dim).check()


# ---- low-rank (SVD) merging ---------------------------------------------------------------

def svd_merges(layer: LayerPlan, num_kv_heads: int, keys: torch.Tensor, values: torch.Tensor, *,
               rope: bool) -> list[KvMerge]:
    """KvMerges from calibration activations of one layer's original k/v projections
    (keys, values: [tokens, num_kv_heads * d], before RoPE).

    Per new kv head, the top-d right singular vectors of its sources' concatenated activations
    span the shared head. RoPE keys cannot take an arbitrary d x d mix: RoPE rotates each pair
    (i, i + d/2) by a position-dependent angle, which commutes only with multiplying that pair,
    read as a complex number, by a complex scalar. So for RoPE keys each frequency i gets its own
    rank-1 complex SVD across the group's heads, and P and Q are per-frequency complex scalars.
    """
    d = keys.shape[1] // num_kv_heads
    keys, values = keys.double(), values.double()
    merges = []
    for group in kv_sources(layer, num_kv_heads):
        if len(group) == 1:
            merges.append(_mean_merge(group, d))
            continue
        key_in, query_fold = (_rope_key_merge(keys, group, d) if rope else _real_merge(keys, group, d))
        value_in, _ = _real_merge(values, group, d)
        # values: v_g ~= V_g v', so W_o,h' = W_o,h V_g = W_o,h value_in[g]^T
        merges.append(KvMerge(key_in, query_fold, value_in, {g: value_in[g].T for g in group}))
    return merges


def _columns(x: torch.Tensor, group: Iterable[int], d: int) -> torch.Tensor:
    return torch.cat([x[:, g * d:(g + 1) * d] for g in group], dim=1)


def _real_merge(x: torch.Tensor, group: list[int], d: int):
    """P_g = U_g^T (the shared head is U^T x_G) and Q_g = U_g^T (q' = U_g^T q)."""
    _, _, vh = torch.linalg.svd(_columns(x, group, d), full_matrices=False)
    basis = vh[:d].T  # [|G| d, d]
    proj = {g: basis[i * d:(i + 1) * d].T.float() for i, g in enumerate(group)}
    return proj, proj


def _rope_key_merge(keys: torch.Tensor, group: list[int], d: int):
    """Per frequency, a rank-1 complex SVD of the group's key pairs; returns P and Q as real
    d x d matrices acting as complex scalars on each (i, i + d/2) pair."""
    half = d // 2
    key_in = {g: torch.zeros(d, d, dtype=torch.float64) for g in group}
    for i in range(half):
        z = torch.stack([torch.complex(keys[:, g * d + i], keys[:, g * d + half + i]) for g in group], dim=1)
        _, _, vh = torch.linalg.svd(z, full_matrices=False)
        coeff = vh[0].conj()  # shared z' = sum_g coeff_g z_g; z_g ~= conj(coeff_g) z'
        for g, c in zip(group, coeff):
            m = key_in[g]
            m[i, i], m[i, half + i] = c.real, -c.imag
            m[half + i, i], m[half + i, half + i] = c.imag, c.real
    # q . k_g ~= q . (conj(c) z') = (c q) . z' on each pair, so Q_g multiplies by c as well.
    key_in = {g: m.float() for g, m in key_in.items()}
    return key_in, key_in
