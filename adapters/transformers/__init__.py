"""Hugging Face transformers' continuous batching on Revati's virtual CUDA.

A process of a Revati session hooks transformers by itself as it imports transformers' model
code and continuous batching (adapters/session.py calls `on_modeling_import` and `on_import`
then, or at once when it joins a process that has imported them already), so a program runs
under `revatictl run` as it is.

transformers 5.17's `ContinuousBatchingManager` (`init_continuous_batching`, `generate_batch`,
`continuous_batching_context_manager`) runs unchanged on virtual `cuda` tensors: the model's
ops, the paged KV cache (`PagedAttentionCache`, sized from `torch.cuda.mem_get_info`, which
is the virtual allocator's), the scheduler's host-side metadata (block tables, cumulative
sequence lengths, read and write indices: small integer tensors, host-backed, so their values
are real) and the sampled tokens read back with `.tolist()` (values from the token oracle).
What the glue adds, at transformers' seams and without editing installed files:

* the token oracle is set from the model when a manager is created (vocabulary size, EOS ids
  of the generation config, the manager's seed): sampled ids are valid ids of that model and
  never an EOS, so every request generates its `max_new_tokens`, as with EOS disabled;
* the attention of `paged|sdpa` (transformers' CB attention when flash-attn is absent) is one
  dense `scaled_dot_product_attention` over the packed batch with a block-causal mask: on a GPU
  that is the memory-efficient kernel computing every (query, key) pair of the packed batch,
  and the launch says exactly that (ATTENTION, one sequence of `q_tokens` queries over
  `kv_sum` keys, `aten::_scaled_dot_product_efficient_attention`). The glue wraps the
  registered `paged|sdpa` and `paged|eager` functions (`AttentionInterface`) to record each
  call's batch composition (sequences, query and key lengths, from `cu_seq_lens_q/k`) in
  `calls`, for tests and traces; the kernel's cost does not depend on it;
* with CUDA graphs (`use_cuda_graph=True`, async batching or not), CB samples inside its
  graphs: each replay draws the graph's output ids again from the token oracle (a virtual
  replay reruns no op). Its `torch.cuda.MemPool` is virtual CUDA's;
* `from_pretrained` on a folder with a config and no weights (a bundled config's folder,
  `revati.adapters.models.model_dir`) builds the model with initialised weights, as vLLM's
  `--load-format dummy` does: `device_map="cuda"` (with accelerate) builds them on the
  virtual GPU at once, a CPU build moved with `.to("cuda")` works too; with `tp_plan="auto"`
  under `torchrun`, each rank holds its shards on its own virtual GPU (DTensor), and the
  ranks' all-reduces are collectives revatid meets.

Not covered: `paged|flash_attention_*` (varlen flash kernels, whose cost does depend on the
composition) needs flash-attn's functions on virtual tensors; `torch.compile` paths are
untested.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import sys
import threading
from pathlib import Path
from typing import Any

CB_MODULE = "transformers.generation.continuous_batching.continuous_api"
MODELING_MODULE = "transformers.modeling_utils"
# what transformers loads weights from (model.safetensors, shards and their index, .bin, ...)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.h5", "*.msgpack",
                "*.index.json")
ATTENTION = ("paged|sdpa", "paged|eager")  # the CB attention functions whose calls are recorded

_lock = threading.Lock()

calls: collections.deque[dict[str, Any]] = collections.deque(maxlen=4096)
"""The batch composition of recent paged attention calls (layer 0 only): `seqs`, `q_lens`,
`kv_lens`, `impl`."""


def on_import(continuous_api: Any) -> None:
    """Hook the manager of transformers' CB module (CB_MODULE, just imported), when virtual CUDA
    is installed: a real device needs no glue. Hooking once is enough; a second call does
    nothing. The attention functions are wrapped when a manager is made: transformers
    registers them in `modeling_utils`, which may still be importing now (it imports this
    module on its way)."""
    from revati.adapters import cuda

    if not cuda.is_installed():
        return
    manager = getattr(continuous_api, "ContinuousBatchingManager", None)
    runner = getattr(continuous_api, "ModelRunner", None)
    with _lock:
        if manager is not None and not getattr(manager.__init__, "_revati", False):
            _hook_manager(manager)
        if runner is not None and not getattr(runner._capture_graph, "_revati", False):
            _hook_graph_capture(runner)


def on_modeling_import(modeling_utils: Any) -> None:
    """Let `from_pretrained` take a folder with a model's config and no weights (Revati's
    bundled configs, a user's config.json): the model gets initialised weights instead, as
    vLLM's `--load-format dummy` gives, since on a virtual GPU no kernel reads them. Weights
    that are there load as usual. Hooking once is enough; a second call does nothing."""
    cls = getattr(modeling_utils, "PreTrainedModel", None)
    if cls is None:
        return
    original = cls.from_pretrained.__func__
    if getattr(original, "_revati", False):
        return

    @functools.wraps(original)
    def from_pretrained(klass: Any, pretrained_model_name_or_path: Any = None, *args: Any,
                        **kwargs: Any) -> Any:
        path = pretrained_model_name_or_path
        if (path is not None and kwargs.get("state_dict") is None
                and not kwargs.get("gguf_file") and _config_only(path)):
            from revati.adapters import cuda

            if cuda.is_installed():
                print(f"revati: {path} holds a config and no weights: {klass.__name__} gets "
                      "initialised weights", file=sys.stderr)
                # the config from the folder, as from_pretrained reads it (its own keyword
                # arguments still override it); no checkpoint to load
                kwargs["config"] = kwargs.get("config") or str(path)
                return original(klass, None, *args, state_dict={}, **kwargs)
        return original(klass, path, *args, **kwargs)

    from_pretrained._revati = True  # type: ignore[attr-defined]
    cls.from_pretrained = classmethod(from_pretrained)


def _config_only(path: Any) -> bool:
    """A local folder with a config.json and none of the files weights load from."""
    folder = Path(path) if isinstance(path, (str, os.PathLike)) else None
    if folder is None or not (folder / "config.json").is_file():
        return False
    return not any(next(folder.glob(pattern), None) for pattern in WEIGHT_FILES)


def _hook_manager(cls: Any) -> None:
    init = cls.__init__

    # the manager's own attributes once it is made, not its arguments: the signature moves
    # between transformers versions (the vLLM and SGLang venvs hold 5.19, which imports this
    # module too)
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        set_oracle_for(self.model.config, self.generation_config,
                       self.continuous_batching_config.seed)
        _record_attention()

    __init__._revati = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def _hook_graph_capture(cls: Any) -> None:
    """With CUDA graphs (`use_cuda_graph`), CB samples inside the graph: it writes the next
    tokens into its static `output_ids`, which the host reads after the step. A virtual replay
    reruns no op, so those ids would stay what the capture left; each replay of a graph
    captured by `cls._capture_graph(forward_fn, stream, model, batch_data, carry_over_ids,
    prev_output_ids, output_ids)` draws them again from the token oracle, as the sampling kernel
    would write them."""
    capture = cls._capture_graph

    @functools.wraps(capture)
    def _capture_graph(self: Any, forward_fn: Any, compute_stream: Any, *args: Any) -> None:
        capture(self, forward_fn, compute_stream, *args)
        graph = self.inputs_and_outputs.get_graph()
        if graph is not None and args:
            graph.replay = functools.partial(_replay_and_sample, graph.replay, args[-1])

    _capture_graph._revati = True  # type: ignore[attr-defined]
    cls._capture_graph = _capture_graph


def _replay_and_sample(replay: Any, output_ids: Any) -> None:
    from revati.adapters.cuda.state import S
    from revati.adapters.cuda.tensor import ValuesUnavailable, host_values

    replay()
    with S.link().freeze():
        try:
            ids = host_values(output_ids)
        except ValuesUnavailable:  # too large to keep values: each read of it draws afresh
            return
        # row 0: the ids (row 1, where asked, log-probabilities); the last column is the
        # static 0 that carry-over reads
        S.oracle.fill(ids[0, :-1])


def _record_attention() -> None:
    """Wrap the registered CB attention functions (once) to record each call's batch."""
    from transformers.modeling_utils import AttentionInterface

    with _lock:
        for name in ATTENTION:
            original = AttentionInterface._global_mapping.get(name)
            if original is not None and not getattr(original, "_revati", False):
                AttentionInterface.register(name, _recording(name, original))


def set_oracle_for(config: Any, generation_config: Any = None, seed: int | None = None) -> None:
    """Token oracle for a model: its vocabulary, its EOS ids (never sampled)."""
    from revati.adapters import cuda

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    eos: list[int] = []
    for source in (generation_config, text):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is None or value == -1:
            continue
        eos.extend(value if isinstance(value, (list, tuple)) else [value])
    eos = sorted({int(e) for e in eos if 0 <= int(e) < text.vocab_size})
    cuda.set_oracle(cuda.TokenOracle(text.vocab_size, eos, seed=seed or 0))


def _lengths(cu: Any) -> list[int] | None:
    """Per-sequence lengths from a cumulative-lengths tensor (or dict of them), when its
    values are host-backed."""
    if isinstance(cu, dict):  # per layer type ("full_attention", ...)
        cu = next(iter(cu.values()), None)
    if cu is None:
        return None
    try:
        values = cu.tolist()
    except RuntimeError:  # meta-backed: no values
        return None
    return [b - a for a, b in itertools.pairwise(values)]


def _recording(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                  *args: Any, **kwargs: Any) -> Any:
        if getattr(module, "layer_idx", 0) == 0:
            q, k = _lengths(kwargs.get("cu_seq_lens_q")), _lengths(kwargs.get("cu_seq_lens_k"))
            if q is not None:
                calls.append({"impl": name, "seqs": len(q), "q_lens": q, "kv_lens": k})
        return fn(module, query, key, value, attention_mask, *args, **kwargs)

    attention._revati = True  # type: ignore[attr-defined]
    return attention
