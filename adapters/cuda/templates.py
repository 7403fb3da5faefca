"""Forward templates: an eager forward's launches, replayed for a token count not seen before.

A serving step that fits no captured graph (one that holds a prefill, past the largest capture
size) runs the model eagerly. On a GPU the host launches its few hundred kernels well ahead of
the device, so the step takes the kernels' time; here each of them is a trip through
PyTorch's dispatcher and Revati's virtual CUDA, and the forward costs the host several times
its GPU time. Production vLLM's piecewise graphs exist for the same reason.

A forward of T tokens through a model launches the same kernels at every T, with features
affine in T (a GEMM's m is T, a norm's bytes are T x hidden x 2), except those whose cost is
the step's batch composition (attention), which framework glue launches as dynamic nodes
(`graphs.dynamic`). So `ForwardTemplates.run` records forwards as they run (the launches still
go to the link), fits every static feature and the output's shape as a + b * T from two
forwards with the same kernel sequence and checks the fit on a third (or, for one T, takes two
forwards at it that launched the same). A later forward of a T near those it was fitted and
checked on (`_Template.covers`) is then a graph launch (registered once per T) plus the dynamic
nodes, and its output a fresh tensor of the fitted shape, since no value a kernel computes is
real.

A forward is not templated when it does anything but launch on one stream (a sync, an event, a
collective), when a feature is not affine in T or not an integer at the asked T, or when its
output is not one tensor. Every CHECK_EVERY-th templated forward runs eagerly instead and is
compared with the template; a mismatch drops the template.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from threading import get_ident
from typing import Any

import numpy as np

from revati.adapters.cuda import graphs, streams
from revati.adapters.cuda.state import S
from revati.adapters.gpu_link import CALLS_BESIDES_LAUNCH
from revati.predictors.launch import Family, LaunchEvent

CHECK_EVERY = 64  # templated forwards between two that run eagerly to re-check the template
MAX_PENDING = 6  # recorded forwards kept per key while no template fits them
MAX_GRAPHS = 4096  # registered graphs kept per template (one per token count)
OP = "eager_forward"  # the trace's name for a templated forward's graph launch


def enabled() -> bool:
    """REVATI_FORWARD_TEMPLATES=0 runs every eager forward through virtual CUDA."""
    return os.environ.get("REVATI_FORWARD_TEMPLATES", "1") != "0"


@dataclass
class _Sample:
    """One recorded forward: its token count, what must match for two forwards to share a
    template (kernel sequence, where the dynamic nodes ran, the output's kind), and its
    integer features, flat."""

    tokens: int
    signature: tuple
    values: np.ndarray
    nodes: list[Callable[[], None]]


@dataclass
class _Template:
    signature: tuple
    base_tokens: int
    base: np.ndarray  # the flat features at base_tokens
    slope_num: np.ndarray  # per token: slope_num / slope_den
    slope_den: int
    lo: int
    hi: int
    nodes: list[Callable[[], None]]
    dtype: str  # the graph launch's, the kernels' most common
    graphs: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # per T:
    # the registered graph's id and the output's shape
    uses: int = 0

    def covers(self, tokens: int) -> bool:
        """Within the range it was checked on, widened by its own width on either side (so a
        forward recorded at a new extreme doubles it)."""
        width = self.hi - self.lo
        return self.lo - width <= tokens <= self.hi + width

    def predict(self, tokens: int) -> np.ndarray | None:
        """The flat features at `tokens`, or None where one is not an integer."""
        num = self.slope_num * (tokens - self.base_tokens)
        step, rest = np.divmod(num, self.slope_den)
        return None if rest.any() else self.base + step


def _spoiling(name: str) -> Callable[..., Any]:
    """A GpuLink call of _Recorder other than a launch: passed through; on the recording
    thread it spoils the recording (the forward depends on more than its launches)."""

    def call(self: _Recorder, *args: Any, **kwargs: Any) -> Any:
        if get_ident() == self.thread:
            self.spoiled = True
        return getattr(self.link, name)(*args, **kwargs)

    call.__name__ = name
    return call


class _Recorder:
    """The link while a forward is recorded: everything passes through; the recording thread's
    launches are kept, those of dynamic nodes aside, and any other call of that thread spoils
    the recording."""

    __slots__ = ("events", "freeze", "in_node", "link", "node_at", "nodes", "now_ns",
                 "op_freeze", "spoiled", "stream", "thread")

    def __init__(self, link: Any) -> None:
        self.link = link
        self.thread = get_ident()
        self.now_ns, self.freeze, self.op_freeze = link.now_ns, link.freeze, link.op_freeze
        self.events: list[LaunchEvent] = []
        self.nodes: list[Callable[[], None]] = []
        self.node_at: list[int] = []  # how many static launches preceded each node
        self.in_node = False
        self.spoiled = False
        self.stream: tuple[int, int] | None = None

    def launch(self, ev: LaunchEvent) -> None:
        if not self.in_node and get_ident() == self.thread:
            if self.stream is None:
                self.stream = (ev.device, ev.stream)
            elif self.stream != (ev.device, ev.stream):
                self.spoiled = True
            self.events.append(ev)
        self.link.launch(ev)

    def run_node(self, node: Callable[[], None]) -> None:
        """graphs.dynamic: run the node now, and keep it (on the recording thread)."""
        if get_ident() != self.thread:
            node()
            return
        self.nodes.append(node)
        self.node_at.append(len(self.events))
        self.in_node = True
        try:
            node()
        finally:
            self.in_node = False


for _name in ("launch_run", *CALLS_BESIDES_LAUNCH):
    setattr(_Recorder, _name, _spoiling(_name))


class ForwardTemplates:
    """The templates of one model's forward, per key (what else the forward's launches depend
    on besides the token count: the inputs' kinds, say)."""

    def __init__(self) -> None:
        self.templates: dict[Hashable, list[_Template]] = {}
        self.pending: dict[Hashable, list[_Sample]] = {}
        self.replays = 0
        self.recorded = 0
        self.dropped = 0

    def run(self, key: Hashable, tokens: int, forward: Callable[[], Any]) -> Any:
        """`forward()`'s result, from a template where one covers `tokens`."""
        stream = streams.current_stream()
        if stream.capture is not None:
            return forward()
        for tpl in self.templates.get(key, ()):
            if tpl.covers(tokens):
                tpl.uses += 1
                if tpl.uses % CHECK_EVERY:
                    out = self._replay(tpl, tokens, stream)
                    if out is not None:
                        return out
                break
        return self._record(key, tokens, forward)

    # -- recording and fitting
    def _record(self, key: Hashable, tokens: int, forward: Callable[[], Any]) -> Any:
        link = S.link()
        rec = _Recorder(link)
        saved, S.link_override = S.link_override, rec
        try:
            out = forward()
        finally:
            S.link_override = saved
        sample = _sample(rec, tokens, out)
        if sample is not None:
            self.recorded += 1
            self._learn(key, sample)
        return out

    def _learn(self, key: Hashable, s: _Sample) -> None:
        templates = self.templates.setdefault(key, [])
        for tpl in templates:
            if tpl.signature == s.signature and _agrees(tpl, s):
                tpl.lo, tpl.hi = min(tpl.lo, s.tokens), max(tpl.hi, s.tokens)
                return
            if tpl.covers(s.tokens):  # the template was wrong where it would be used
                templates.remove(tpl)
                self.dropped += 1
                break
        pending = self.pending.setdefault(key, [])
        pending.append(s)
        tpl = _fit([p for p in pending if p.signature == s.signature])
        if tpl is not None:
            templates.append(tpl)
            pending[:] = [p for p in pending if p.signature != s.signature]
        else:
            del pending[:-MAX_PENDING]

    # -- replay
    def _replay(self, tpl: _Template, tokens: int, stream: streams.Stream) -> Any:
        signature = tpl.signature
        if (stream.device_index, stream.stream_id) != signature[0]:
            return None
        link = S.link()
        with link.freeze():
            graph = tpl.graphs.get(tokens)
            if graph is None:
                values = tpl.predict(tokens)
                if values is None or len(tpl.graphs) >= MAX_GRAPHS:
                    return None
                events, shape = _unflatten(signature, values, link.now_ns())
                graph = tpl.graphs[tokens] = (link.register_graph(events), shape)
            graph_id, shape = graph
            dtype, device = signature[3]
            ev = LaunchEvent(int(Family.GRAPH), OP, tpl.dtype, device,
                             stream.stream_id, link.now_ns(), (graph_id,))
            graphs.launch_graph(link, ev, tpl.nodes)
            self.replays += 1
            import torch

            return torch.empty(shape, dtype=dtype, device=S.devices[device])


# signature: (stream, kernels, node positions, (output dtype, device), feature lengths)
def _sample(rec: _Recorder, tokens: int, out: Any) -> _Sample | None:
    import torch

    if rec.spoiled or rec.stream is None or not isinstance(out, torch.Tensor) \
            or not out.is_cuda or out.requires_grad or out.dim() == 0:
        return None
    kernels = tuple((e.family, e.op, e.dtype) for e in rec.events)
    lengths = tuple(len(e.feats) for e in rec.events)
    flat = [f for e in rec.events for f in e.feats]
    flat.extend(out.shape)
    if not all(isinstance(f, int) for f in flat):
        return None
    values = np.array(flat, dtype=np.int64)
    signature = (rec.stream, kernels, tuple(rec.node_at), (out.dtype, out.device.index or 0),
                 lengths, out.dim())
    return _Sample(tokens, signature, values, rec.nodes)


def _fit(samples: list[_Sample]) -> _Template | None:
    """A template for samples of one signature: affine in the token count where three token
    counts agree on it; for one token count where two forwards at it launched the same (a
    workload of fixed-length prompts repeats a few counts only)."""
    by_tokens: dict[int, _Sample] = {}
    repeated = None
    dtype = graphs.graph_dtype(kernel[2] for kernel in samples[0].signature[1])
    for s in samples:
        seen = by_tokens.setdefault(s.tokens, s)
        if seen is not s and np.array_equal(seen.values, s.values):
            repeated = s
    if len(by_tokens) >= 3:
        a, b, *rest = by_tokens.values()
        den = b.tokens - a.tokens
        num = b.values - a.values
        if den < 0:
            num, den = -num, -den
        tpl = _Template(a.signature, a.tokens, a.values, num, den, min(by_tokens),
                        max(by_tokens), a.nodes, dtype)
        if all(_agrees(tpl, s) for s in rest):
            return tpl
    if repeated is not None:
        return _Template(repeated.signature, repeated.tokens, repeated.values,
                         np.zeros_like(repeated.values), 1, repeated.tokens, repeated.tokens,
                         repeated.nodes, dtype)
    return None


def _agrees(tpl: _Template, s: _Sample) -> bool:
    predicted = tpl.predict(s.tokens)
    return predicted is not None and np.array_equal(predicted, s.values)


def _unflatten(signature: tuple, values: np.ndarray, t_ns: int,
               ) -> tuple[list[LaunchEvent], tuple[int, ...]]:
    (device, stream), kernels, _, _, lengths, out_dim = signature
    flat = values.tolist()
    events, i = [], 0
    for (family, op, dtype), n in zip(kernels, lengths, strict=True):
        events.append(LaunchEvent(family, op, dtype, device, stream, t_ns,
                                  tuple(flat[i:i + n])))
        i += n
    return events, tuple(flat[i:i + out_dim])
