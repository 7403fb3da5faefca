"""SGLang adapter pieces that need no server: the plugins outside a session, the platform, and
the attention backend's launches for a mixed batch."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed (scripts/setup_sglang_env.sh)")
torch = pytest.importorskip("torch")

from revati.predictors.launch import Family  # noqa: E402
from tests.cuda.conftest import RecordingLink  # noqa: E402

pytestmark = pytest.mark.sglang


def test_plugins_stay_out_of_the_way_outside_a_session() -> None:
    from revati.adapters import sglang as adapter

    assert adapter.platform_plugin() is None
    adapter.general_plugin()  # no-op


def test_the_platform_is_out_of_tree_cuda(vcuda: Any) -> None:
    from revati.adapters.sglang.platform import RevatiPlatform

    p = RevatiPlatform()
    assert p.is_out_of_tree() and not p.is_cuda()
    assert p.get_dispatch_key_name() == "revati"
    assert p.get_device(1) == torch.device("cuda", 1)
    assert p.get_device_name(0) == torch.cuda.get_device_name(0)
    assert not p.capabilities.supports_triton and not p.capabilities.supports_pynccl
    from sglang.srt.model_executor.cuda_graph_config import default_cuda_graph_config

    from revati.adapters.sglang.kernels import CUSTOM_ALL_REDUCE_ENV

    os.environ.pop(CUSTOM_ALL_REDUCE_ENV, None)
    args = SimpleNamespace(sampling_backend=None, sleep_on_idle=False,
                           disable_custom_all_reduce=True, cuda_graph_backend_prefill=None,
                           cuda_graph_backend_decode="full",
                           cuda_graph_config=default_cuda_graph_config())
    p.apply_server_args_defaults(args)  # the user's --disable-custom-all-reduce: NCCL's times
    assert CUSTOM_ALL_REDUCE_ENV not in os.environ
    args.disable_custom_all_reduce = False
    p.apply_server_args_defaults(args)
    assert args.sampling_backend == "pytorch" and args.sleep_on_idle
    # off, for it needs a driver; its all-reduces are timed as its kernel all the same
    assert args.disable_custom_all_reduce and os.environ.pop(CUSTOM_ALL_REDUCE_ENV) == "1"
    assert args.cuda_graph_config.prefill.backend == "disabled"
    assert args.cuda_graph_config.decode.backend == "full"  # the user's choice stays
    args = SimpleNamespace(cuda_graph_backend_prefill=None, cuda_graph_backend_decode=None,
                           cuda_graph_config=default_cuda_graph_config())
    p.apply_server_args_defaults(args)  # unnamed: decode graphs (virtual CUDAGraph), eager prefill
    assert args.cuda_graph_config.decode.backend == "full"
    assert args.cuda_graph_config.prefill.backend == "disabled"
    assert p.capabilities.graph_capture
    from sglang.srt.model_executor.runner.decode_cuda_graph_runner import DecodeCudaGraphRunner

    assert issubclass(p.get_graph_runner_cls(), DecodeCudaGraphRunner)


def test_the_decode_graph_runners_input_buffers_keep_their_slices(vcuda: Any) -> None:
    """Each replay slices the runner's buffers to the batch: the same view every time, for the
    buffers dataclass's fields and the registry's slots alike."""
    import dataclasses

    import torch

    from revati.adapters.sglang.graph_runner import keep_buffer_slices

    @dataclasses.dataclass
    class Buffers:
        input_ids: Any
        seq_lens_cpu: Any
        aux_hidden_states: Any = None

    ids = torch.zeros(64, dtype=torch.int64, device="cuda")
    positions = torch.zeros(64, dtype=torch.int64, device="cuda")
    runner = SimpleNamespace(
        buffers=Buffers(ids, torch.zeros(64, dtype=torch.int32)),
        buffer_registry=SimpleNamespace(_slots={"positions": SimpleNamespace(buffer=positions)}))
    with torch.inference_mode():
        assert ids[:8] is not ids[:8]
        keep_buffer_slices(runner)
        assert ids[:8] is ids[:8] and positions[:4] is positions[:4]


class _Mode:
    def __init__(self, decode: bool) -> None:
        self.decode = decode

    def is_decode_or_idle(self) -> bool:
        return self.decode


def test_attention_launches_per_part_of_a_mixed_batch(vcuda: Any, link: RecordingLink) -> None:
    from revati.adapters.sglang import attention

    writes: list[Any] = []
    pool = SimpleNamespace(set_kv_buffer=lambda layer, loc, k, v: writes.append(loc))
    backend = attention.RevatiAttnBackend(SimpleNamespace(device="cuda", token_to_kv_pool=pool))
    # two decode rows (KV 100 and 50) and one prefill row of 30 new tokens (KV 40)
    fb = SimpleNamespace(forward_mode=_Mode(False), seq_lens_cpu=torch.tensor([100, 50, 40]),
                         extend_seq_lens_cpu=[1, 1, 30],
                         out_cache_loc=torch.arange(32, device="cuda"))
    backend.init_forward_metadata(fb)
    layer = SimpleNamespace(tp_q_head_num=32, tp_k_head_num=8, head_dim=128, v_head_dim=128)
    q = torch.empty(32, 32 * 128, device="cuda", dtype=torch.bfloat16)
    k = torch.empty(32, 8 * 128, device="cuda", dtype=torch.bfloat16)
    n = len(link.launches)
    out = backend.forward_extend(q, k, k, layer, fb)
    assert out.shape == (32, 32 * 128) and out.device.type == "cuda"
    assert len(writes) == 1 and writes[0].loc is fb.out_cache_loc
    attn = [e for e in link.launches[n:] if e.family == Family.ATTENTION]
    assert [e.feats for e in attn] == [
        (2, 2, 150, 100, 100 * 100 + 50 * 50, 32, 8, 128, 1),
        (1, 30, 40, 40, 40 * 40, 32, 8, 128, 1),
    ]
    assert all(e.dtype == "bf16" and e.op == attention.ATTENTION_OP for e in attn)


def test_the_backend_registers_with_sglang() -> None:
    from sglang.srt.arg_groups import choices
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    from revati.adapters.sglang import attention

    attention.register()
    attention.register()
    assert ATTENTION_BACKENDS["revati"] is attention.RevatiAttnBackend
    assert choices.ATTENTION_BACKEND_CHOICES.count("revati") == 1


def test_fused_op_stand_ins_register_for_the_op_and_its_parameter_only_subclasses() -> None:
    from sglang.kernels.fused_op import BaseFusedOp
    from sglang.kernels.ops.attention.clamp_position import ClampPositionOp
    from sglang.srt.layers.activation import SiluAndMul
    from sglang.srt.layers.layernorm import RMSNorm
    from sglang.srt.layers.rotary_embedding.mrope import MRotaryEmbedding
    from sglang.srt.layers.rotary_embedding.rope_variant import Llama3RotaryEmbedding

    from revati.adapters.sglang import fused_ops

    fused_ops.register()
    reg = BaseFusedOp._oot_forward_registry["revati"]
    assert reg[RMSNorm] is fused_ops.rms_norm and reg[SiluAndMul] is fused_ops.silu_and_mul
    assert reg[Llama3RotaryEmbedding] is fused_ops.rotary
    assert reg[ClampPositionOp] is fused_ops.clamp_position
    assert MRotaryEmbedding not in reg  # a forward of its own: its native path stays


def test_fused_op_stand_ins_emit_one_launch_each(vcuda: Any, link: RecordingLink) -> None:
    from sglang.srt.layers.activation import SiluAndMul
    from sglang.srt.layers.layernorm import RMSNorm

    from revati.adapters.sglang import fused_ops

    h, t = 4096, 8
    norm = RMSNorm(h, weight_dtype=torch.bfloat16).to("cuda")
    norm.fuse_input_quant(torch.nn.Linear(1, 1))  # as Llama does for every layer norm
    x = torch.empty(t, h, device="cuda", dtype=torch.bfloat16)
    res = torch.empty(t, h, device="cuda", dtype=torch.bfloat16)
    rope = SimpleNamespace(rotary_dim=128)
    q = torch.empty(t, 32 * 128, device="cuda", dtype=torch.bfloat16)
    k = torch.empty(t, 8 * 128, device="cuda", dtype=torch.bfloat16)
    pos = torch.arange(t, device="cuda")
    n = len(link.launches)
    out = fused_ops.rms_norm(norm, x)
    assert out.shape == x.shape and out is not x
    assert fused_ops.rms_norm(norm, x, res) == (x, res)  # in place, as the fused kernel
    gate_up = torch.empty(t, 2 * 14336, device="cuda", dtype=torch.bfloat16)
    assert fused_ops.silu_and_mul(SiluAndMul(), gate_up).shape == (t, 14336)
    assert fused_ops.rotary(rope, pos, q, k) == (q, k)
    launches = link.launches[n:]
    assert [(e.family, e.op) for e in launches] == [
        (Family.MEMORY, "sglang::rmsnorm"), (Family.MEMORY, "sglang::fused_add_rmsnorm"),
        (Family.MEMORY, "sglang::silu_and_mul"), (Family.MEMORY, "sglang::rotary_embedding")]
    assert launches[0].feats == (2 * t * h * 2 + h * 2, t * h)


def test_qwen3_qk_norm_is_one_launch_with_no_jit_build(vcuda: Any, link: RecordingLink) -> None:
    """Qwen3's QK norm: SGLang's check for its JIT kernel builds it with nvcc (minutes, and the
    session's clock jumped to the start-up timeout meanwhile); the hooks answer the check from
    the shapes and put a one-launch stand-in in the kernel's place."""
    from revati.adapters.sglang import fused_ops, kernels

    targets = dict(kernels.REPLACEMENTS)
    assert targets["sglang.srt.models.utils.can_use_fused_inplace_qknorm"] is \
        fused_ops.can_use_qknorm
    assert targets["sglang.srt.models.utils.fused_inplace_qknorm"] is fused_ops.qknorm
    assert fused_ops.can_use_qknorm(128, torch.bfloat16)
    assert not fused_ops.can_use_qknorm(96, torch.bfloat16)
    t, hd = 8, 128
    q = torch.empty(t, 32, hd, device="cuda", dtype=torch.bfloat16)
    k = torch.empty(t, 8, hd, device="cuda", dtype=torch.bfloat16)
    w = torch.empty(hd, device="cuda", dtype=torch.bfloat16)
    n = len(link.launches)
    assert fused_ops.qknorm(q, k, w, w, 1e-6, head_dim=hd) is None  # in place
    (launch,) = link.launches[n:]
    assert (launch.family, launch.op) == (Family.MEMORY, "sglang::qknorm")
    assert launch.feats == (2 * (t * 40 * hd * 2) + 2 * hd * 2, t * 40 * hd)


def test_expert_location_metadata_is_made_on_the_host_and_lands_on_its_inputs_device(
        vcuda: Any) -> None:
    """A MoE model's expert maps: made from host copies (past the values a virtual tensor
    keeps), their device fields moved to the device the inputs were on, not the current one."""
    from sglang.srt.eplb.expert_location import ExpertLocationMetadata

    from revati.adapters.sglang import kernels

    seen: list[torch.device] = []

    def original(ep_size: int, physical: torch.Tensor, logical: torch.Tensor) -> Any:
        seen.extend((physical.device, logical.device))
        fields = dict.fromkeys(ExpertLocationMetadata.__dataclass_fields__)
        fields.update(physical_to_logical_map=physical, logical_to_all_physical_map=logical,
                      logical_to_all_physical_map_num_valid=(logical != -1).sum(-1),
                      physical_to_logical_map_cpu=physical.cpu(), ep_size=ep_size)
        return ExpertLocationMetadata(**fields)

    torch.cuda.set_device(0)
    physical = torch.arange(8, device="cuda:1").reshape(1, 8)
    logical = torch.arange(64, device="cuda:1").reshape(1, 8, 8) % 8
    meta = kernels._expert_location_on_host(original, 1, physical, logical)
    assert seen == [torch.device("cpu")] * 2
    assert meta.physical_to_logical_map.device == torch.device("cuda", 1)
    assert meta.logical_to_all_physical_map_num_valid.device == torch.device("cuda", 1)
    assert meta.physical_to_logical_map_cpu.device == torch.device("cpu")
    assert meta.logical_to_rank_dispatch_physical_map is None
    assert meta.physical_to_logical_map.tolist() == [list(range(8))]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_clamp_position_computes_a_decode_batchs_positions_in_two_launches(
        vcuda: Any, link: RecordingLink, dtype: torch.dtype) -> None:
    """The values the native path gives (the host may read them), the JIT kernel's and the
    cast's launches on a real GPU."""
    from sglang.kernels.ops.attention.clamp_position import ClampPositionOp

    from revati.adapters.sglang import fused_ops

    op = ClampPositionOp()
    seq_lens = torch.tensor([0, 1, 7, 130], dtype=dtype, device="cuda")
    n = len(link.launches)
    positions = fused_ops.clamp_position(op, seq_lens)
    assert positions.device.type == "cuda" and positions.dtype == torch.int64
    assert positions.tolist() == op.forward_native(seq_lens).tolist() == [0, 0, 6, 129]
    size = seq_lens.element_size()
    assert [(e.op, e.feats) for e in link.launches[n:n + 2]] == [
        ("sglang::clamp_position", (2 * 4 * size, 4)), ("aten::_to_copy", (4 * size + 32, 4))]
    host = torch.tensor([3, 0])
    assert fused_ops.clamp_position(op, host).tolist() == [2, 0]  # not virtual: native


def test_the_token_oracle_takes_the_models_vocabulary_and_leaves_out_its_eos(vcuda: Any) -> None:
    from revati.adapters.cuda import state
    from revati.adapters.sglang import oracle

    cfg = SimpleNamespace(hf_config=SimpleNamespace(vocab_size=128256), vocab_size=128256,
                          hf_eos_token_id={128001, 128008, 128009})
    oracle.set_for(cfg, seed=3)
    o = state.S.oracle
    assert o.vocab_size == 128256 and list(o.eos_ids) == [128001, 128008, 128009]
    ids = o.tokens(100000)
    assert ids.max() < 128256 and not set(ids.tolist()) & {128001, 128008, 128009}


def test_a_replayed_decode_graph_launches_attention_with_its_own_steps_batch(
        vcuda: Any, link: RecordingLink) -> None:
    from revati.adapters.sglang import attention

    pool = SimpleNamespace(set_kv_buffer=lambda layer, loc, k, v: None)
    backend = attention.RevatiAttnBackend(SimpleNamespace(device="cuda", token_to_kv_pool=pool))
    backend.init_cuda_graph_state(4, 4)
    layer = SimpleNamespace(tp_q_head_num=32, tp_k_head_num=8, head_dim=128, v_head_dim=128)
    q = torch.empty(2, 32 * 128, device="cuda", dtype=torch.bfloat16)
    k = torch.empty(2, 8 * 128, device="cuda", dtype=torch.bfloat16)

    def step(kv: list[int], in_capture: bool = False) -> Any:
        fb = SimpleNamespace(forward_mode=_Mode(True), seq_lens_cpu=torch.tensor(kv),
                             out_cache_loc=torch.arange(2, device="cuda"))
        backend.init_forward_metadata_out_graph(fb, in_capture=in_capture)
        return fb

    fill = backend.get_cuda_graph_seq_len_fill_value()
    fb = step([fill, fill], in_capture=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        backend.forward_decode(q, k, k, layer, fb)
    assert not [e for e in graph.events if e.family == Family.ATTENTION]  # a dynamic node
    for kv in ([100, 7], [300, 9]):
        step(kv)
        n = len(link.launches)
        graph.replay()
        attn = [e for e in link.launches[n:] if e.family == Family.ATTENTION]
        assert [e.feats[:5] for e in attn] == [(2, 2, sum(kv), max(kv), kv[0]**2 + kv[1]**2)]
