"""Measure kernel times on a real device with PyTorch alone, in the profile CSV schema
(`dataset.py`), for `revatictl predictors train --sku SKU --profile DIR`.

    python -m revati.predictors.profiler --out DIR [--device cuda|cpu] [--quick]
    python -m revati.predictors.profiler --out DIR --model NAME [--max-tokens N]
    python -m revati.predictors.profiler --specs [--device cuda|cpu]
    python -m revati.predictors.profiler --out DIR --merge DIR1 --merge DIR2 ... [--model NAME]

Grids: GEMMs over LLM layer shapes (linear layers: `F.linear` with an [n, k] weight); attention
(scaled_dot_product_attention, and flash-attn / FlashInfer when installed) for prefill and
decode batches; memory-bound ops (norms, activations, adds, copies, embeddings, softmax); on a
machine with several GPUs, NCCL collectives on 2..N ranks. `--model NAME` (a bundled config,
adapters/models) times instead the shapes that model runs: its linear layers at every batch
size to --max-tokens, the masked attention of transformers' `paged|sdpa` (one packed sequence
of all queries over all keys, heads repeated) and the memory ops at its widths. Features follow
the adapter's conventions (features.py). DIR also gets spec.json: the device's figures as a
specs.json entry (measured peaks), which is the spec a bundle uses for a device that specs.json
does not list (host-cpu), and the device's slowdown after idle (`--wake-rounds`,
predictors/wake.py) as its `wake` entry. `--merge` pools profiles taken at other moments
(`pooled`) and measures the spec and wake afresh.

On CUDA each launch's time is its kernels' device time from torch.profiler (no launch gaps,
as in Vidur's data); on CPU the wall time of the call. Medians over --repeats. A GEMM's weight
rotates through copies as large together as the model's weights (--working-set-mib; with
--model, that model's), capped at twice the last-level cache: a forward pass reads each weight
once per step, after all the others, so from memory when the model exceeds the cache and from
the cache when it fits, while one weight timed again and again would always come from the cache
(2-4x too fast for a 1-row GEMM on a 2-core host with 32 MB of L3). Without a model the copies
exceed twice the cache: from memory, as any model a GPU serves is read.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import math
import operator
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from revati.predictors import wake
from revati.predictors.dataset import capped_mean, profile_rows, row_time_ns, write_profile
from revati.predictors.launch import DTYPE_BYTES, Collective, Family

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the profiler is the one part of the predictors that needs torch
    torch = None

_MARK = "revati_profile_iter"
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class Device:
    """Where and how kernels are timed."""

    def __init__(self, kind: str, repeats: int) -> None:
        self.kind = kind
        self.repeats = repeats
        self.torch = torch.device("cuda" if kind == "cuda" else "cpu")
        self.dtype = "fp32" if kind == "cpu" else "bf16"  # what models are timed in here

    def sync(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize()

    def time_ns(self, fn: Callable[[], Any]) -> list[float]:
        """Per-call times of `fn` (after warm-up), in ns."""
        for _ in range(2):
            fn()
        self.sync()
        if self.kind == "cpu":
            out = []
            for _ in range(self.repeats):
                t0 = time.perf_counter_ns()
                fn()
                out.append(float(time.perf_counter_ns() - t0))
            return out
        from torch.profiler import ProfilerActivity, profile, record_function

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(self.repeats):
                with record_function(_MARK):
                    fn()
            self.sync()
        # device time of the kernels launched inside each marked range, us -> ns
        return [e.device_time_total * 1e3 for e in prof.events() if e.name == _MARK]

    def tensor(self, *shape: int, dtype: str = "fp32") -> Any:
        return torch.randn(*shape, dtype=getattr(torch, _DTYPES[dtype]), device=self.torch)


def _nbytes(*tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cache_bytes(kind: str) -> int:
    """The device's last-level cache in bytes (the GPU's L2, the CPU's largest cache)."""
    if kind == "cuda":
        return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 50 << 20
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        digits = text.rstrip("KMB")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=32 << 20)


def working_set(kind: str, weights: int | None = None) -> int:
    """The bytes a GEMM's weight copies span: a model's `weights` (read once a forward pass
    each), at most twice the last-level cache, which is what reads them all from memory."""
    cap = 2 * cache_bytes(kind)
    return cap if weights is None else min(weights, cap)


def weight_bytes(cfg: dict[str, Any], dtype: str) -> int:
    """The bytes of a Llama-style model's weights (linear layers, embedding and LM head;
    norms are too small to count)."""
    per_layer = sum(n * k for n, k in _layer_linears(cfg))
    vocab = cfg["vocab_size"] * cfg["hidden_size"]
    params = cfg["num_hidden_layers"] * per_layer + vocab * (
        1 if cfg.get("tie_word_embeddings") else 2)
    return params * DTYPE_BYTES[dtype]


def rotating(first: Any, nbytes: int, pool: int, make: Callable[[], Any]) -> Iterator[Any]:
    """`first` and enough copies (from `make`) to reach `pool` bytes, cycled, after three
    passes of 1-row GEMMs over them: a cache keeps a line read once at low priority, so a
    model's weights are in it only after a few steps (on a host with 300 MB of L3, a 1-row
    GEMM over a set of 16-66 MiB took 80-90 us in the first two passes and 41-44 after)."""
    weights = [first] + [make() for _ in range(math.ceil(pool / max(nbytes, 1)) - 1)]
    for w in weights * 3:
        F.linear(w[:1], w)
    return itertools.cycle(weights)


def kept_outputs(dev: Device, fn: Callable[[], Any], nbytes: int, pool: int,
                 ) -> Callable[[], Any]:
    """On a CPU, `fn` with its latest results kept, as many as fill `pool` bytes (`nbytes`
    each), so that no call writes the block an earlier call of the case just freed, hot in
    the core's caches: it writes memory freed by earlier cases (a case makes a dozen calls),
    or once the ring is full the oldest kept output's, as inside a model, where the allocator
    hands an op memory that other ops have used since. Timed with a dropped result, the
    self-check's element-wise ops and clones came out 24% shorter than inside its model, and
    5% shorter written into buffers rotated over the working set; kept results close most of
    that gap (a [128, 512] mul: 30 us dropped, 36 kept, 40 rotated). On a GPU `fn` as it is
    (its device time is not measured so)."""
    if dev.kind != "cpu" or pool <= 0:
        return fn
    ring: deque[Any] = deque(maxlen=max(1, pool // max(nbytes, 1)))

    def keeping() -> Any:
        out = fn()
        ring.append(out)
        return out
    return keeping


# -- grids: each yields (family, op, dtype, feats, fn)

Case = tuple[Family, str, str, tuple[int, ...], Callable[[], Any]]


def _gemm_rows(top: int) -> list[int]:
    """Row counts (tokens) to time: every count to 8, where decode batches live and a small
    GEMM's kernel changes with each row (interpolating there gave a 3-row GEMM less time than
    a 1-row one), then powers of two and the counts halfway between."""
    rows = set(range(1, 9))
    m = 8
    while m < top:
        rows.update((m + m // 2, 2 * m))
        m *= 2
    return sorted(rows)


def gemm_cases(dev: Device, quick: bool, pool: int) -> Iterator[Case]:
    """`pool`: the bytes each weight's copies span (working_set)."""
    if dev.kind == "cpu":
        dtypes = ["fp32"] if quick else ["fp32", "bf16"]
        shapes = [(256, 512), (512, 512), (1024, 1024), (2048, 512), (512, 2048)]
        if not quick:
            shapes += [(4096, 4096), (11008, 4096), (4096, 11008)]
        ms = _gemm_rows(128 if quick else 1024)
    else:
        dtypes = ["bf16", "fp16"] if not quick else ["bf16"]
        shapes = [(4096, 4096), (6144, 4096), (12288, 4096), (4096, 11008), (22016, 4096),
                  (8192, 8192), (28672, 8192), (8192, 28672), (1024, 1024), (2560, 2560)]
        if quick:
            shapes = shapes[:4]
        ms = _gemm_rows(16384)
    for dtype in dtypes:
        for n, k in shapes:
            # a linear layer's weight, [n, k] as models keep it (the layout changes a CPU
            # GEMM's time by up to 2x)
            w = dev.tensor(n, k, dtype=dtype)
            weights = rotating(w, _nbytes(w), pool, partial(dev.tensor, n, k, dtype=dtype))
            for m in ms:
                a = dev.tensor(m, k, dtype=dtype)
                yield Family.GEMM, "aten::linear", dtype, (m, n, k, 1), kept_outputs(
                    dev, lambda a=a, w=weights: F.linear(a, next(w)),
                    m * n * a.element_size(), pool)


def _attention_shapes(dev: Device, quick: bool) -> list[tuple[int, int, int, int, int, int]]:
    """(batch, q_len, kv_len, heads, kv_heads, head_dim): prefills and decodes."""
    if dev.kind == "cpu":
        heads = [(8, 8, 64), (8, 2, 64)]
        prefill = [(1, s) for s in (32, 64, 128, 256)] + [(4, 64)]
        decode = [(b, s) for b in (1, 8) for s in (64, 256, 1024)]
    else:
        heads = [(32, 8, 128), (32, 32, 128), (64, 8, 128)]
        prefill = [(b, s) for b in (1, 4) for s in (128, 512, 1024, 2048, 4096, 8192)]
        decode = [(b, s) for b in (1, 8, 32, 128) for s in (128, 512, 2048, 8192)]
    if quick:
        heads = heads[:1]
    return [(b, s, s, h, hkv, d) for h, hkv, d in heads for b, s in prefill] + \
        [(b, 1, s, h, hkv, d) for h, hkv, d in heads for b, s in decode]


def _attn_feats(b: int, sq: int, skv: int, h: int, hkv: int, d: int,
                causal: bool | None = None) -> tuple[int, ...]:
    """The adapter's ATTENTION features; causal unless told: the grids' prefills are."""
    causal = sq > 1 if causal is None else causal
    return (b, b * sq, b * skv, skv, b * skv * skv, h, hkv, d, int(causal))


def attention_cases(dev: Device, quick: bool) -> Iterator[Case]:
    dtype = dev.dtype
    # the name the adapter reports: on a GPU, SDPA without a mask runs the flash kernel
    sdpa = "aten::scaled_dot_product_attention" if dev.kind == "cpu" else \
        "aten::_scaled_dot_product_flash_attention"
    shapes = _attention_shapes(dev, quick)
    for b, sq, skv, h, hkv, d in shapes:
        q = dev.tensor(b, h, sq, d, dtype=dtype)
        k, v = dev.tensor(b, hkv, skv, d, dtype=dtype), dev.tensor(b, hkv, skv, d, dtype=dtype)
        yield Family.ATTENTION, sdpa, dtype, _attn_feats(b, sq, skv, h, hkv, d), \
            lambda q=q, k=k, v=v, causal=sq > 1: F.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=True)
    if dev.kind != "cuda":
        return
    yield from _flash_attn_cases(dev, shapes)
    yield from _flashinfer_cases(dev, shapes)


def _flash_attn_cases(dev: Device, shapes: list) -> Iterator[Case]:
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return
    for b, sq, skv, h, hkv, d in shapes:
        q = dev.tensor(b, sq, h, d, dtype="bf16")
        k, v = dev.tensor(b, skv, hkv, d, dtype="bf16"), dev.tensor(b, skv, hkv, d, dtype="bf16")
        yield Family.ATTENTION, "flash_attn::fwd", "bf16", _attn_feats(b, sq, skv, h, hkv, d), \
            lambda q=q, k=k, v=v, causal=sq > 1: flash_attn_func(q, k, v, causal=causal)


def _flashinfer_cases(dev: Device, shapes: list) -> Iterator[Case]:
    try:
        import flashinfer
    except ImportError:
        return
    for b, sq, skv, h, hkv, d in shapes:
        if b != 1:  # the single-request kernels: one sequence per launch
            continue
        q = dev.tensor(sq, h, d, dtype="bf16")
        k, v = dev.tensor(skv, hkv, d, dtype="bf16"), dev.tensor(skv, hkv, d, dtype="bf16")
        if sq == 1:
            op, fn = "flashinfer::single_decode", partial(
                flashinfer.single_decode_with_kv_cache, q[0], k, v)
        else:
            op, fn = "flashinfer::single_prefill", partial(
                flashinfer.single_prefill_with_kv_cache, q, k, v, causal=True)
        yield Family.ATTENTION, op, "bf16", _attn_feats(1, sq, skv, h, hkv, d), fn


def memory_grid(dev: Device, quick: bool, pool: int) -> Iterator[Case]:
    if dev.kind == "cpu":  # cheap: the quick grid keeps both widths (a model's hidden and MLP)
        tokens, widths = [2**i for i in range(11)], [512, 2048]
    else:
        tokens, widths = [2**i for i in range(15)], [2048, 4096, 8192]
        if quick:
            widths = widths[:1]
    return memory_cases(dev, tokens, widths, pool=pool)


def _slots(arena: Any, shapes: Sequence[tuple[int, ...]], span: int,
           ) -> Iterator[tuple[Any, ...]]:
    """Groups of tensors of `shapes`, views of `arena` one after another over `span` elements
    of it (at least one group), cycled: each call of an op reads the next group, so that its
    inputs come from as far as `span` reaches."""
    sizes = [math.prod(shape) for shape in shapes]
    per = sum(sizes)
    starts = list(itertools.accumulate(sizes, initial=0))
    slots = [tuple(arena[i * per + a:i * per + a + n].view(shape)
                   for a, n, shape in zip(starts[:-1], sizes, shapes, strict=True))
             for i in range(max(1, span // per))]
    return itertools.cycle(slots)


def memory_cases(dev: Device, tokens: list[int], widths: list[int], vocab: int = 32000,
                 pool: int = 0) -> Iterator[Case]:
    """`pool`: on a CPU, the bytes the inputs of each op rotate through (working_set). A
    forward pass reads an activation after other ops, its GEMMs' weights among them, have gone
    through the caches: from the last-level cache or memory, not from the core's own caches,
    which is where an input read again and again sits (on a Xeon with 2 MiB of L2 a [128, 512]
    add took 7.7 us so and 28-31 us inside the self-check's model; with inputs rotated through
    the model's 64 MiB, 32-40 us). A GPU's memory ops are not rotated (not measured there)."""
    dtype = dev.dtype
    table = dev.tensor(vocab, max(widths), dtype=dtype)
    largest = max(tokens) * 2 * max(widths)  # elements of the largest group: (x, y) or x2
    span = pool // DTYPE_BYTES[dtype] if dev.kind == "cpu" else 0
    arena = dev.tensor(max(largest, span), dtype=dtype)
    for h in widths:
        w = dev.tensor(h, dtype=dtype)
        emb = table[:, :h].contiguous()
        for t in tokens:
            pairs, wide = _slots(arena, [(t, h)] * 2, span), _slots(arena, [(t, 2 * h)], span)
            x = next(pairs)[0]
            ids = torch.randint(0, vocab, (t,), device=dev.torch)
            # (op, fn, bytes read + written, elements of the largest output)
            ops = [
                ("aten::add", lambda p=pairs: operator.add(*next(p)), 3 * _nbytes(x),
                 x.numel()),
                ("aten::silu", lambda p=pairs: F.silu(next(p)[0]), 2 * _nbytes(x), x.numel()),
                ("aten::gelu", lambda p=pairs: F.gelu(next(p)[0]), 2 * _nbytes(x), x.numel()),
                ("aten::rms_norm", lambda p=pairs, w=w, h=h: F.rms_norm(next(p)[0], (h,), w),
                 2 * _nbytes(x) + _nbytes(w), x.numel()),
                ("aten::layer_norm",
                 lambda p=pairs, w=w, h=h: F.layer_norm(next(p)[0], (h,), w, w),
                 2 * _nbytes(x) + 2 * _nbytes(w), x.numel()),
                ("aten::_softmax", lambda p=wide: torch.softmax(next(p)[0], -1), 4 * _nbytes(x),
                 2 * x.numel()),
                ("aten::copy_", lambda p=pairs: _copy_across(*next(p)), 2 * _nbytes(x),
                 x.numel()),
                ("aten::embedding", lambda ids=ids, emb=emb: F.embedding(ids, emb),
                 2 * _nbytes(x) + _nbytes(ids), x.numel()),
                # a Llama layer's other small ops, as transformers writes it (its RMSNorm in
                # pow, mean, rsqrt and mul, the rotary in neg and cat, the paged cache's write
                # and gather); unprofiled, the memory model met index_copy_ with a byte ratio
                # no profiled copy has and gave it a sixth of its 28 us at 111 x 512
                ("aten::mul", lambda p=pairs: operator.mul(*next(p)), 3 * _nbytes(x),
                 x.numel()),
                ("aten::pow", lambda p=pairs: next(p)[0].pow(2), 2 * _nbytes(x), x.numel()),
                ("aten::rsqrt", lambda p=pairs: torch.rsqrt(next(p)[0]), 2 * _nbytes(x),
                 x.numel()),
                ("aten::neg", lambda p=pairs: operator.neg(next(p)[0]), 2 * _nbytes(x),
                 x.numel()),
                ("aten::mean", lambda p=pairs: next(p)[0].mean(-1, keepdim=True),
                 _nbytes(x) + t * x.element_size(), t),
                ("aten::cat", lambda p=pairs: torch.cat(next(p), -1), 4 * _nbytes(x),
                 2 * x.numel()),
                ("aten::clone", lambda p=pairs: next(p)[0].clone(), 2 * _nbytes(x), x.numel()),
                ("aten::index_select", lambda ids=ids, emb=emb: emb.index_select(0, ids),
                 2 * _nbytes(x) + _nbytes(ids), x.numel()),
                ("aten::index_copy_",
                 lambda p=pairs, ids=ids, emb=emb: emb.index_copy_(0, ids, next(p)[0]),
                 2 * (_nbytes(x) + _nbytes(ids)), x.numel()),
            ]
            for op, fn, nbytes, elems in ops:
                if not op.endswith("_"):  # in place: its output is its input
                    fn = kept_outputs(dev, fn, elems * x.element_size(), pool)
                yield Family.MEMORY, op, dtype, (nbytes, elems), fn


# -- one model's shapes (--model)

def _layer_linears(cfg: dict[str, Any]) -> list[tuple[int, int]]:
    """The (n, k) weights of one Llama-style decoder layer: q, k, v, o, gate, up, down."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or \
        cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    q, kv = (heads * head_dim, hidden), (kv_heads * head_dim, hidden)
    return [q, kv, kv, (hidden, heads * head_dim), (inter, hidden), (inter, hidden),
            (hidden, inter)]


def linear_shapes(cfg: dict[str, Any]) -> list[tuple[int, int]]:
    """The (n, k) weights of a Llama-style model's linear layers, each once."""
    return list(dict.fromkeys([*_layer_linears(cfg), (cfg["vocab_size"], cfg["hidden_size"])]))


def model_gemm_cases(dev: Device, cfg: dict[str, Any], top: int, dtype: str, pool: int,
                     ) -> Iterator[Case]:
    for n, k in linear_shapes(cfg):
        w = dev.tensor(n, k, dtype=dtype)
        weights = rotating(w, _nbytes(w), pool, partial(dev.tensor, n, k, dtype=dtype))
        for m in (m for m in _gemm_rows(top) if m <= top):
            a = dev.tensor(m, k, dtype=dtype)
            yield Family.GEMM, "aten::linear", dtype, (m, n, k, 1), kept_outputs(
                dev, lambda a=a, w=weights: F.linear(a, next(w)), m * n * a.element_size(),
                pool)
        del w, weights


# Gathered keys of a packed batch: every point by halves to 1024 (a serving step's packed keys
# mostly stay under it), then the long contexts. With keys at 64, 256 and 1024 and queries at
# powers of two only, the CPU's masked attention came out 11-30% short between the points
# (3 queries over 185 keys: 42 us predicted, 59 us measured).
PACKED_KV = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096, 6144)


def packed_attention_cases(dev: Device, cfg: dict[str, Any], top: int, dtype: str,
                           pool: int = 0) -> Iterator[Case]:
    """transformers' `paged|sdpa`: every packed query against every gathered key of the batch
    (KV heads repeated to the query heads) under an additive block-causal mask. On a GPU that
    is the memory-efficient kernel or cuDNN's (flash takes no mask): the rows are named after
    the one torch picks here, as the adapter names its launches. `pool`: on a CPU, the bytes
    the inputs rotate through, as memory_cases' do: inside the model a layer's attention reads
    its mask and gathered keys after the layer's GEMMs have streamed their weights through the
    caches (3-5 queries over 165-363 keys took 267 us a call there, 113-125 us with hot inputs
    and 277-290 us with the caches flushed before each call)."""
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    op = "aten::scaled_dot_product_attention"
    if dev.kind == "cuda":
        op = _masked_sdpa_op(heads, head_dim)
    grid = [(sq, skv) for sq in _gemm_rows(top) if sq <= top
            for skv in sorted({sq, *PACKED_KV}) if skv >= sq]
    span = pool // DTYPE_BYTES[dtype] if dev.kind == "cpu" else 0
    largest = max((2 * skv + sq) * heads * head_dim + sq * skv for sq, skv in grid)
    arena = dev.tensor(max(largest, span), dtype=dtype)
    for sq, skv in grid:
        shapes = [(1, heads, sq, head_dim), (1, heads, skv, head_dim),
                  (1, heads, skv, head_dim), (1, 1, sq, skv)]
        groups = _slots(arena, shapes, span)
        yield Family.ATTENTION, op, dtype, _attn_feats(1, sq, skv, heads, heads, head_dim,
                                                        causal=False), kept_outputs(
            dev, lambda g=groups: _masked_sdpa(*next(g)),
            sq * heads * head_dim * DTYPE_BYTES[dtype], pool)


def _copy_across(src: Any, dst: Any) -> Any:
    return dst.copy_(src)


def _masked_sdpa(q: Any, k: Any, v: Any, mask: Any) -> Any:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _masked_sdpa_op(heads: int, head_dim: int) -> str:
    """The fused attention op torch runs for a masked bf16 SDPA on this GPU."""
    from torch.profiler import ProfilerActivity, profile

    q = torch.randn(1, heads, 16, head_dim, dtype=torch.bfloat16, device="cuda")
    mask = torch.zeros(1, 1, 16, 16, dtype=q.dtype, device="cuda")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    names = {e.name for e in prof.events()}
    for op in ("aten::_scaled_dot_product_cudnn_attention",
               "aten::_scaled_dot_product_flash_attention"):
        if op in names:
            return op
    return "aten::_scaled_dot_product_efficient_attention"


def model_pool(dev: Device, cfg: dict[str, Any] | None) -> int:
    """The bytes a GEMM's weight copies span by default: `cfg`'s weights (working_set), the
    cap without a model."""
    return working_set(dev.kind, weight_bytes(cfg, dev.dtype) if cfg else None)


def model_cases(dev: Device, cfg: dict[str, Any], top: int, pool: int | None = None,
                ) -> dict[str, Iterator[Case]]:
    """`pool`: as gemm_cases' (default: the model's weights, working_set)."""
    dtype = dev.dtype
    tokens = [2**i for i in range(top.bit_length()) if 2**i <= top]
    widths = [cfg["hidden_size"], cfg["intermediate_size"]]
    if pool is None:
        pool = model_pool(dev, cfg)
    return {"gemm": model_gemm_cases(dev, cfg, top, dtype, pool),
            "attention": packed_attention_cases(dev, cfg, top, dtype, pool),
            "memory": memory_cases(dev, tokens, widths, vocab=cfg["vocab_size"], pool=pool)}


# The wake probe's step: this many tokens (a prefill's size: what follows a serving engine's
# idle spells), this much work at least (the slowdown fades over tens of ms on a CPU).
WAKE_ROWS = 48
WAKE_STEP_S = 0.05


def wake_step(dev: Device, shapes: Sequence[tuple[int, int]], dtype: str, pool: int,
              ) -> Callable[[], list[float]]:
    """A step for wake.measure: linear layers of `shapes` (a model's layer, in order) at
    WAKE_ROWS tokens, over weights that span `pool` (each read once a pass, as a forward pass
    reads them), as many passes as make WAKE_STEP_S; it returns each GEMM's ns (on a GPU from
    CUDA events between the launches)."""
    weights: list[Any] = []
    while not weights or _nbytes(*weights) < pool:
        weights += [dev.tensor(n, k, dtype=dtype) for n, k in shapes]
    inputs = {k: dev.tensor(WAKE_ROWS, k, dtype=dtype) for _, k in shapes}
    calls = [partial(F.linear, inputs[w.shape[1]], w) for w in weights]
    for call in calls:
        call()
    dev.sync()
    t0 = time.perf_counter()
    for call in calls:
        call()
    dev.sync()
    calls *= max(1, math.ceil(WAKE_STEP_S / max(time.perf_counter() - t0, 1e-6)))
    if dev.kind == "cpu":
        def step() -> list[float]:
            clock = time.perf_counter_ns
            out = []
            t = clock()
            for call in calls:
                call()
                now = clock()
                out.append(float(now - t))
                t = now
            return out
        return step
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(len(calls) + 1)]

    def gpu_step() -> list[float]:
        marks[0].record()
        for call, mark in zip(calls, marks[1:], strict=True):
            call()
            mark.record()
        torch.cuda.synchronize()
        return [a.elapsed_time(b) * 1e6 for a, b in itertools.pairwise(marks)]
    return gpu_step


def measure_wake(dev: Device, cfg: dict[str, Any] | None, pool: int | None, rounds: int,
                 ) -> wake.WakeModel:
    """The device's slowdown after idle (predictors/wake.py), on `cfg`'s layer shapes (without
    one, a layer of the generic GEMM grid's: 512 wide on a CPU, 4096 on a GPU), over weights
    spanning `pool` (default: model_pool)."""
    hidden, inter = (512, 2048) if dev.kind == "cpu" else (4096, 11008)
    shapes = _layer_linears(cfg) if cfg else [(hidden, hidden)] * 4 + [(inter, hidden)] * 2 + [
        (hidden, inter)]
    t0 = time.monotonic()
    step = wake_step(dev, shapes, dev.dtype, model_pool(dev, cfg) if pool is None else pool)
    model = wake.measure(step, time.sleep, rounds)
    print("profiler: wake: after " + ", ".join(
        f"{g / 1e6:g} ms idle +{k / 1e3:.0f} us and {s:.1%}" for g, k, s in zip(
            model.gaps_ns, model.kick_ns, model.slowdown, strict=True))
          + f", fading over {model.decay_ns / 1e6:.0f} ms ({time.monotonic() - t0:.0f} s)",
          file=sys.stderr, flush=True)
    return model


def measure(dev: Device, grids: Callable[[], dict[str, Iterator[Case]]], names: set[str],
            env: dict[str, str], passes: int = 1) -> dict[str, list[dict[str, Any]]]:
    """Time every case of the grids `names` (of `grids()`, one grid per family) in `passes`
    passes over all of them, and pool each case's times: a host whose speed drifts for a
    second or two (a shared VM) then skews one pass, not every time of the cases it was timing
    (back-to-back one-pass profiles of one CPU differed by 5-12% per GEMM shape). On a CPU
    each time is kept less the op's call floor (cpu_call_floor_ns)."""
    times: dict[str, dict[tuple[Family, str, str, tuple[int, ...]], list[float]]] = {}
    for i in range(passes):
        for name, cases in grids().items():
            if name not in names:
                continue
            t0 = time.monotonic()
            by_case = times.setdefault(name, {})
            for family, op, dtype, feats, fn in cases:
                by_case.setdefault((family, op, dtype, feats), []).extend(dev.time_ns(fn))
            print(f"profiler: {name}: {len(by_case)} shapes in {time.monotonic() - t0:.0f} s"
                  + (f" (pass {i + 1} of {passes})" if passes > 1 else ""), file=sys.stderr,
                  flush=True)
    if dev.kind == "cpu":
        for by_case in times.values():
            for (_family, op, _dtype, _feats), ts in by_case.items():
                floor = cpu_call_floor_ns(op)
                ts[:] = [max(t - floor, t * MIN_BEYOND_FLOOR) for t in ts]
    return {name: [_row(case, ts, env) for case, ts in by_case.items() if ts and min(ts) > 0]
            for name, by_case in times.items()}


# On a CPU, the time of an op's call on one-element tensors: the Python binding, the
# dispatcher and the kernel's fixed cost. A program on Revati's virtual device pays that much of
# every op on its host already (what the op's way through Revati costs beyond it is kept out:
# adapters/cuda/entry_cost.py), so a CPU profile keeps only the time beyond it, else a
# self-emulated step would count it twice (1-2 us an op, ~170 launches a decode step of the
# self-check's model: 5-7% of the step).
_FLOOR_CALLS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "aten::linear": lambda t: F.linear(t["x"], t["x"]),
    "aten::add": lambda t: t["x"] + t["x"],
    "aten::silu": lambda t: F.silu(t["x"]),
    "aten::gelu": lambda t: F.gelu(t["x"]),
    "aten::rms_norm": lambda t: F.rms_norm(t["x"], (1,), t["w"]),
    "aten::layer_norm": lambda t: F.layer_norm(t["x"], (1,), t["w"], t["w"]),
    "aten::_softmax": lambda t: torch.softmax(t["x"], -1),
    "aten::copy_": lambda t: t["out"].copy_(t["x"]),
    "aten::embedding": lambda t: F.embedding(t["ids"], t["x"]),
    "aten::mul": lambda t: t["x"] * t["x"],
    "aten::pow": lambda t: t["x"].pow(2),
    "aten::rsqrt": lambda t: torch.rsqrt(t["x"]),
    "aten::neg": lambda t: -t["x"],
    "aten::mean": lambda t: t["x"].mean(-1, keepdim=True),
    "aten::cat": lambda t: torch.cat((t["x"], t["x"]), -1),
    "aten::clone": lambda t: t["x"].clone(),
    "aten::index_select": lambda t: t["x"].index_select(0, t["ids"]),
    "aten::index_copy_": lambda t: t["out"].index_copy_(0, t["ids"], t["x"]),
    "aten::scaled_dot_product_attention": lambda t: F.scaled_dot_product_attention(
        t["q"], t["q"], t["q"], attn_mask=t["q"]),
}
MIN_BEYOND_FLOOR = 0.1  # an op's time kept is at least this share of its call
_floors: dict[str, float] = {}


def cpu_call_floor_ns(op: str, calls: int = 400) -> float:
    """Median ns of a call of `op` on one-element CPU tensors (0 for an op not in
    _FLOOR_CALLS)."""
    if op not in _floors:
        call = _FLOOR_CALLS.get(op)
        if call is None:
            return 0.0
        tensors = {"x": torch.ones(1, 1), "w": torch.ones(1), "out": torch.empty(1, 1),
                   "ids": torch.zeros(1, dtype=torch.long), "q": torch.zeros(1, 1, 1, 1)}
        out = []
        for i in range(calls + 20):
            t0 = time.perf_counter_ns()
            call(tensors)
            if i >= 20:
                out.append(time.perf_counter_ns() - t0)
        _floors[op] = float(statistics.median(out))
    return _floors[op]


def _row(case: tuple[Family, str, str, tuple[int, ...]], times: list[float],
         env: dict[str, str]) -> dict[str, Any]:
    family, op, dtype, feats = case
    return {"family": family.name, "op": op, "dtype": dtype, "feats": " ".join(map(str, feats)),
            **_stats(times), **env}


def _stats(times: list[float]) -> dict[str, int]:
    """A profile row's times (dataset.py): median, p10, p90, repeats and the capped mean."""
    ts = sorted(times)
    median = statistics.median(ts)
    return {"median_ns": round(median), "p10_ns": round(ts[len(ts) // 10]),
            "p90_ns": round(ts[(len(ts) * 9) // 10]), "repeats": len(ts),
            "mean_ns": round(capped_mean(ts, median))}


def pooled(dirs: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    """The profiles in `dirs` (each one pass or more over the same grids, taken at different
    moments) as one: per file (family) and case, the median of their medians, p10s and p90s,
    the sum of their repeats and the mean of their means (by repeats). A host whose speed
    drifts is then sampled over the moments the passes were taken at: the self-check spreads
    its passes between its real runs, so that the profile and the runs see the same spells of
    the host (`revatictl validate --self`)."""
    by_file: dict[str, dict[tuple[str, ...], list[dict[str, str]]]] = {}
    for d in dirs:
        for path in sorted(d.glob("*.csv")):
            for row in profile_rows(path):
                key = (row["family"], row["op"], row["dtype"], row["feats"])
                by_file.setdefault(path.stem, {}).setdefault(key, []).append(row)
    return {name: [_pooled_row(rows) for rows in cases.values()]
            for name, cases in by_file.items()}


def _pooled_row(rows: list[dict[str, str]]) -> dict[str, Any]:
    """One case's rows of several profiles as one (pooled)."""
    repeats = [int(r["repeats"]) for r in rows]
    means = [row_time_ns(r) for r in rows]
    return {**rows[0], **{k: round(statistics.median(float(r[k]) for r in rows))
                          for k in ("median_ns", "p10_ns", "p90_ns")},
            "repeats": sum(repeats),
            "mean_ns": round(sum(m * n for m, n in zip(means, repeats, strict=True))
                             / sum(repeats))}


# -- collectives (CUDA, two or more GPUs): one process per rank
_COLLECTIVE_SIZES = [2**i for i in range(11, 29)]


def _collective_worker(rank: int, world: int, init: str, out: str, repeats: int) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world)
    results = []
    for size in _COLLECTIVE_SIZES:
        n = size // 2  # bf16 elements
        x = torch.empty(n, dtype=torch.bfloat16, device="cuda")
        gathered = torch.empty(n * world, dtype=torch.bfloat16, device="cuda")
        # bytes per rank as the adapter counts them: the tensor for all-reduce and broadcast,
        # one rank's shard for all-gather (input) and reduce-scatter (output)
        ops = [(Collective.ALL_REDUCE, "c10d::allreduce_", lambda x=x: dist.all_reduce(x)),
               (Collective.ALL_GATHER, "c10d::_allgather_base_",
                lambda x=x, g=gathered: dist.all_gather_into_tensor(g, x)),
               (Collective.REDUCE_SCATTER, "c10d::_reduce_scatter_base_",
                lambda x=x, g=gathered: dist.reduce_scatter_tensor(x, g)),
               (Collective.BROADCAST, "c10d::broadcast_", lambda x=x: dist.broadcast(x, 0))]
        for kind, op, fn in ops:
            times = []
            for _ in range(repeats + 2):
                dist.barrier()
                start, end = torch.cuda.Event(enable_timing=True), \
                    torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e6)
            times = sorted(times[2:])
            results.append((kind, op, size, times))
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def collective_rows(world: int, repeats: int, env: dict[str, str]) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    rows = []
    ranks = 2
    while ranks <= world:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "times.json")
            mp.spawn(_collective_worker, args=(ranks, f"file://{tmp}/rdzv", out, repeats),
                     nprocs=ranks, join=True)
            for kind, op, size, times in json.loads(Path(out).read_text()):
                rows.append({"family": Family.COLLECTIVE.name, "op": op, "dtype": "bf16",
                             "feats": f"{kind} {size} {ranks}", **_stats(times), **env})
        ranks *= 2
    return rows


def _model_config(name: str) -> dict[str, Any]:
    from revati.adapters import models

    try:
        return models.config(name)
    except KeyError as exc:
        raise SystemExit(f"profiler: {exc.args[0]}") from None


# -- the device: environment and spec

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(dev: Device) -> dict[str, str]:
    libs = {"torch": torch.__version__, "flash_attn": _version("flash-attn"),
            "flashinfer": _version("flashinfer-python") or _version("flashinfer")}
    if dev.kind == "cuda":
        libs["cuda"] = torch.version.cuda
        libs["cudnn"] = str(torch.backends.cudnn.version())
        libs["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        name = torch.cuda.get_device_name(0)
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
        except OSError:
            driver = ""
    else:
        name, driver = _cpu_name(), ""
        libs["threads"] = str(torch.get_num_threads())
    return {"device_name": name, "driver": driver,
            "libraries": " ".join(f"{k}={v}" for k, v in libs.items() if v)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_rate(rows: list[dict[str, Any]], family: str, dtype: str | None,
               work: Callable[[list[int]], float]) -> float | None:
    rates = [work([int(x) for x in r["feats"].split()]) / (r["median_ns"] * 1e-9)
             for r in rows if r["family"] == family and (dtype is None or r["dtype"] == dtype)]
    return max(rates) if rates else None


def _pcie() -> dict[str, float]:
    """Pinned host-to-device copy bandwidth (64 MiB) and latency (4 KiB), by CUDA events."""
    def copy_s(nbytes: int) -> float:
        src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        times = []
        for _ in range(7):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src, non_blocking=True)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        return statistics.median(times[2:])

    return {"bytes_per_s": (1 << 26) / copy_s(1 << 26), "latency_s": copy_s(4096)}


def device_spec(dev: Device, rows: list[dict[str, Any]], env: dict[str, str],
                woken: wake.WakeModel | None = None) -> dict[str, Any]:
    """A specs.json entry for this device, with the peaks measured here (and `woken`, its
    slowdown after idle, when measured)."""
    flops = {d: r for d in ("fp32", "bf16", "fp16")
             if (r := _best_rate(rows, "GEMM", d, lambda f: 2 * f[0] * f[1] * f[2] * f[3]))}
    bandwidth = _best_rate(rows, "MEMORY", None, lambda f: f[0])
    memory = [r for r in rows if r["family"] == "MEMORY"]
    floor_s = min((r["median_ns"] for r in memory), default=3000) * 1e-9
    spec: dict[str, Any] = {"name": env["device_name"], "aliases": [],
                            "flops": flops, "hbm_bytes_per_s": bandwidth or 1e10,
                            "launch_overhead_s": floor_s, "measured": True}
    if woken is not None:
        spec["wake"] = woken.to_spec()
    if dev.kind == "cuda":
        p = torch.cuda.get_device_properties(0)
        spec.update(capability=[p.major, p.minor], sm_count=p.multi_processor_count,
                    memory_bytes=p.total_memory, l2_bytes=getattr(p, "L2_cache_size", 0))
        coll = _best_rate(rows, "COLLECTIVE", None, lambda f: f[1])
        spec["interconnect"] = {"kind": "measured", "bytes_per_s": coll or 25e9,
                                "latency_s": 10e-6}
        spec["pcie"] = _pcie()
    else:
        spec.update(sm_count=torch.get_num_threads(), memory_bytes=os.sysconf("SC_PAGE_SIZE")
                    * os.sysconf("SC_PHYS_PAGES"))
        # host memory is the device's memory: copies and transfers move at its bandwidth
        link = {"bytes_per_s": bandwidth or 1e10, "latency_s": floor_s}
        spec["interconnect"] = {"kind": "host-memory", **link}
        spec["pcie"] = link
        # a CPU runs each kernel on the calling thread: the host waits for every launch
        spec["synchronous"] = True
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m revati.predictors.profiler",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quick", action="store_true", help="a small grid (minutes, not hours)")
    ap.add_argument("--repeats", type=int, help="timed calls per shape (default 20, CPU 5)")
    ap.add_argument("--passes", type=int, default=1,
                    help="time the whole grid this many times and pool each shape's times "
                    "(default 1; a host whose speed drifts needs more)")
    ap.add_argument("--families", default="gemm,attention,memory,collective")
    ap.add_argument("--model", help="time the shapes of this bundled model (adapters/models) "
                    "instead of the generic grids")
    ap.add_argument("--max-tokens", type=int, default=512,
                    help="--model: the largest batch (tokens) to time (default 512)")
    ap.add_argument("--working-set-mib", type=float,
                    help="the served model's weights (MiB): a GEMM's weight copies span this "
                    "much, capped at twice the last-level cache (default: the cap; with "
                    "--model, that model's weights)")
    ap.add_argument("--wake-rounds", type=int, default=20,
                    help="time the slowdown after idle (predictors/wake.py) over this many "
                    "rounds of its idle spells, with the GEMMs (default 20, ~1 s each on a "
                    "CPU; 0: not)")
    ap.add_argument("--merge", action="append", type=Path, default=[], metavar="DIR",
                    help="pool these profile folders (passes taken at other moments, "
                    "repeatable) instead of timing the grids; the spec and wake are "
                    "measured here")
    ap.add_argument("--specs", action="store_true",
                    help="print this device's spec entry (measured on a small grid) and exit")
    args = ap.parse_args(argv)
    if torch is None:
        print("profiler: needs PyTorch (pip install torch)", file=sys.stderr)
        return 2
    if os.environ.get("REVATI_SESSION"):
        print("profiler: refusing to run inside a Revati session (it would time the "
              "emulator)", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("profiler: no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    if not args.specs and args.out is None:
        ap.error("--out is required")
    dev = Device(args.device, args.repeats or (20 if args.device == "cuda" else 5))
    env = environment(dev)
    families = set(args.families.split(","))
    quick = args.quick or args.specs
    pool = None if args.working_set_mib is None else working_set(
        dev.kind, int(args.working_set_mib * (1 << 20)))
    cfg = _model_config(args.model) if args.model else None

    def grids() -> dict[str, Iterator[Case]]:
        if cfg is not None:
            return model_cases(dev, cfg, args.max_tokens, pool)
        return {"gemm": gemm_cases(dev, quick, pool or working_set(dev.kind)),
                "attention": attention_cases(dev, quick),
                "memory": memory_grid(dev, quick, pool or working_set(dev.kind))}

    for d in args.merge:
        if not d.is_dir():
            ap.error(f"--merge: no profile folder {d}")
    rows_by_family = (pooled(args.merge) if args.merge
                      else measure(dev, grids, families, env, args.passes))
    if "collective" in families and dev.kind == "cuda" and torch.cuda.device_count() > 1:
        rows_by_family["collective"] = collective_rows(torch.cuda.device_count(), dev.repeats,
                                                       env)
    woken = None
    if "gemm" in families and args.wake_rounds > 0 and not args.specs:
        woken = measure_wake(dev, cfg, pool, args.wake_rounds)
    rows = [r for rs in rows_by_family.values() for r in rs]
    spec = device_spec(dev, rows, env, woken)
    if args.specs:
        print(json.dumps(spec, indent=1))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rs in rows_by_family.items():
        write_profile(args.out / f"{name}.csv", rs)
    (args.out / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    print(f"profiler: {len(rows)} shapes on {env['device_name']} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
