"""Virtual tensors: how they are made, which keep values, what reading them costs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from revati.predictors.launch import CopyDirection, Family  # noqa: E402
from tests.cuda.conftest import NUM_GPUS, SKU, RecordingLink  # noqa: E402

pytestmark = pytest.mark.torch


def is_virtual(t: Any, device: str = "cuda:0") -> bool:
    from revati.adapters.cuda.tensor import VirtualTensor

    return type(t) is VirtualTensor and t.device == torch.device(device) and t.is_cuda


@pytest.fixture
def dispatched(vcuda: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the ops that reach Revati's dispatch from now on, in order."""
    from revati.adapters.cuda import tensor

    names: list[str] = []
    real_dispatch = tensor.dispatch
    monkeypatch.setattr(tensor, "dispatch", lambda func, *a: names.append(
        func._schema.name) or real_dispatch(func, *a))
    return names


def test_every_way_to_make_a_cuda_tensor(vcuda: Any, link: RecordingLink) -> None:
    made = {
        "empty": torch.empty(2, 3, device="cuda"),
        "zeros": torch.zeros(4, device="cuda"),
        "full": torch.full((2,), 7, device="cuda"),
        "arange": torch.arange(5, device="cuda"),
        "rand": torch.rand(3, device="cuda"),
        "tensor": torch.tensor([1, 2, 3], device="cuda"),
        "as_tensor": torch.as_tensor([1.5, 2.5], device="cuda"),
        "to": torch.ones(2).to("cuda"),
        "to non_blocking": torch.ones(2).to("cuda", non_blocking=True),
        "cuda()": torch.ones(2).cuda(),
        "from_numpy": torch.from_numpy(np.arange(4)).cuda(),
        "zeros_like": torch.zeros_like(torch.ones(3), device="cuda"),
        "new_zeros": torch.ones(2, device="cuda").new_zeros(5),
        "device context": _in_device_context(),
        "module": nn.Linear(4, 4, device="cuda").weight,
    }
    for name, t in made.items():
        assert is_virtual(t), name
    assert made["full"].tolist() == [7, 7]
    assert made["arange"].tolist() == [0, 1, 2, 3, 4]
    assert made["tensor"].tolist() == [1, 2, 3]
    assert made["as_tensor"].tolist() == [1.5, 2.5]
    assert made["from_numpy"].tolist() == [0, 1, 2, 3]
    assert made["new_zeros"].tolist() == [0.0] * 5
    assert is_virtual(torch.ones(2, device="cuda:1"), "cuda:1")
    assert is_virtual(torch.ones(2).to(torch.device("cuda", 1)), "cuda:1")


def _in_device_context() -> Any:
    with torch.device("cuda"):
        return torch.empty(3)


def test_small_tensors_keep_true_values(vcuda: Any, link: RecordingLink) -> None:
    t = torch.arange(10, device="cuda")
    assert (t * 2).cumsum(0).tolist() == [0, 2, 6, 12, 20, 30, 42, 56, 72, 90]
    assert t[t > 6].tolist() == [7, 8, 9]  # data-dependent shape: computed on the values
    assert torch.where(t > 7, t, -t).tolist() == [0, -1, -2, -3, -4, -5, -6, -7, 8, 9]
    assert t.sort(descending=True).values[:3].tolist() == [9, 8, 7]
    assert torch.topk(t.float(), 2).indices.tolist() == [9, 8]
    positions = torch.zeros(4, dtype=torch.long, device="cuda")
    positions[1:] = torch.tensor([5, 6, 7], device="cuda")
    positions += 1
    assert positions.tolist() == [1, 6, 7, 8]
    assert int(positions.sum()) == 22 and bool((positions > 0).all())
    out = torch.empty(0, device="cuda")
    torch.add(torch.ones(3, device="cuda"), 1, out=out)  # out= resizes the virtual tensor
    assert out.shape == (3,) and out.tolist() == [2.0, 2.0, 2.0]
    x = torch.ones(3, device="cuda")
    x.unsqueeze_(0)
    assert x.shape == (1, 3)
    x.t_()
    assert x.shape == (3, 1) and x.tolist() == [[1.0], [1.0], [1.0]]


def test_large_tensors_are_meta_backed(vcuda: Any, link: RecordingLink) -> None:
    from revati.adapters.cuda.tensor import ValuesUnavailable

    a = torch.randn(2048, 2048, device="cuda")
    c = a @ a
    assert c._a.host is None and is_virtual(c)
    with pytest.raises(ValuesUnavailable, match=r"produced by aten::mm"):
        c.tolist()
    c.add_(1)
    with pytest.raises(ValuesUnavailable, match=r"produced by aten::add_"):
        c.cpu()
    assert "produced_by=aten::add_" in repr(c)
    assert c.sum().item() == 0.0  # a scalar no kernel computed: from the oracle
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        c.numpy()


def test_sampled_tokens_come_from_the_oracle(vcuda: Any, link: RecordingLink) -> None:
    from revati.adapters.cuda import TokenOracle, set_oracle
    from revati.adapters.cuda.state import S

    saved = S.oracle
    try:
        logits = torch.empty(16, 128256, device="cuda", dtype=torch.bfloat16)
        set_oracle(TokenOracle(vocab_size=128256, eos_ids=[128001, 128009], seed=3))
        ids = logits.argmax(-1)
        first = ids.tolist()
        assert ids.tolist() == first  # read twice, same values
        assert ids[4:8].tolist() == first[4:8]  # a view sees the same values
        assert all(0 <= t < 128256 and t not in (128001, 128009) for t in first)
        set_oracle(TokenOracle(vocab_size=128256, eos_ids=[128001, 128009], seed=3))
        assert logits.argmax(-1).tolist() == first  # deterministic per seed
        probs = torch.softmax(logits.float(), -1)
        assert torch.multinomial(probs, 1).view(-1).tolist() != first
    finally:
        set_oracle(saved)


def test_reads_wait_for_the_stream(vcuda: Any, link: RecordingLink) -> None:
    a = torch.empty(1024, 1024, device="cuda")
    b = a @ a
    torch.cuda.synchronize()
    t0 = link.clock
    (b @ b).sum().item()  # mm, sum, then the one-element copy to the host
    assert link.clock - t0 == 3 * link.duration_ns
    t1, n1 = link.clock, len(link.launches)
    small = torch.ones(8, device="cuda") * 2
    assert small.tolist() == [2.0] * 8
    assert [e.op for e in link.launches[n1:]] == ["aten::fill_", "aten::mul", "aten::_to_copy"]
    assert link.clock - t1 == 3 * link.duration_ns
    small.add_(1)
    host = torch.empty(8)
    host.copy_(small)  # a blocking copy into pageable memory waits
    assert host.tolist() == [3.0] * 8 and link.syncs[-1] == ("stream", (0, 0))
    small.add_(1)
    pinned = torch.empty(8, pin_memory=True)
    assert pinned.is_pinned()
    n = len(link.syncs)
    pinned.copy_(small, non_blocking=True)  # async into pinned memory: no wait
    landed = small.to("cpu", non_blocking=True)
    assert len(link.syncs) == n
    assert landed.is_pinned() and landed.tolist() == [4.0] * 8
    landed.fill_(0)  # its own memory
    assert small.tolist() == [4.0] * 8
    n = len(link.syncs)
    as_double = small.to("cpu", torch.float64)
    assert as_double.dtype == torch.float64 and as_double.tolist() == [4.0] * 8
    assert not as_double.is_pinned() and len(link.syncs) == n + 1  # blocking: waits
    assert small.to(small.device) is small and small.to(torch.float32) is small
    assert is_virtual(small.to(torch.float16), "cuda:0")
    copies = [e for e in link.launches if e.family == Family.HOST_COPY]
    assert copies[-1].feats == (32, CopyDirection.D2H)
    assert pinned.tolist() == [4.0] * 8
    assert torch.ones(3).pin_memory().is_pinned()


class _DepthLink(RecordingLink):
    """Records how deep in freezes each wait for the device happens."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.sync_depths: list[int] = []

    @contextlib.contextmanager
    def freeze(self) -> Iterator[None]:
        self.freezes += 1
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    op_freeze = freeze

    def synchronize(self, device: int, stream: int | None) -> int:
        self.sync_depths.append(self.depth)
        return super().synchronize(device, stream)


def test_a_to_under_inference_mode_is_one_frozen_op_unless_it_reaches_the_host(
        vcuda: Any) -> None:
    """Under inference mode every `to` reaches Revati, even one that changes nothing (in C++
    on a real device): it is frozen as one op, except where it may copy to the host, whose
    wait for the device is program time and must not be frozen."""
    link = _DepthLink()
    vcuda.install(SKU, NUM_GPUS, link=link)
    torch.cuda.set_device(0)
    torch.cuda.set_stream(torch.cuda.default_stream(0))
    x = torch.ones(8, device="cuda")
    with torch.inference_mode():
        def unchanged() -> bool:
            return (x.float() is x and x.to(x.device) is x and x.to(torch.float32) is x
                    and x.to("cuda:0", torch.float32) is x)

        assert unchanged()  # the first call of each overload also reads its schema, frozen
        n, f = len(link.launches), link.freezes
        assert unchanged()
        assert len(link.launches) == n and link.freezes == f + 4  # one freeze each, no kernel
        half = x.to(torch.float16)
        assert is_virtual(half) and half.dtype == torch.float16
        assert link.launches[-1].op == "aten::_to_copy"
        assert is_virtual(x.to(torch.device("cuda", 1)), "cuda:1")
        assert x.to("cpu").tolist() == [1.0] * 8
        assert x.to(torch.empty(0, dtype=torch.float64)).tolist() == [1.0] * 8  # to(other)
        assert x.to(torch.device("cpu"), torch.float64).dtype == torch.float64
    assert link.sync_depths == [0, 0, 0]  # the three copies to the host waited unfrozen


def test_a_tensor_from_data_is_built_on_the_host_and_copied_once(vcuda: Any,
                                                                   link: RecordingLink) -> None:
    """`torch.tensor(data, device="cuda")` (transformers' continuous batching builds its
    inputs so, ~7 a step): PyTorch's own result, by one host-to-device copy."""
    n = len(link.launches)
    t = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32, device="cuda")
    assert is_virtual(t) and t.dtype == torch.int32 and t.tolist() == [[1, 2], [3, 4]]
    h2d = link.launches[n:n + 1]
    assert [(e.family, e.feats) for e in h2d] == [(Family.HOST_COPY, (16, CopyDirection.H2D))]
    assert torch.tensor([1.5], device="cuda").dtype == torch.float32  # inferred as PyTorch does
    assert torch.tensor(3, device=torch.device("cuda", 1)).shape == ()
    assert is_virtual(torch.tensor(3, device=torch.device("cuda", 1)), "cuda:1")
    leaf = torch.tensor([1.0], device="cuda", requires_grad=True)
    assert leaf.is_leaf and leaf.requires_grad and is_virtual(leaf)
    host = torch.tensor([1, 2], device="cpu")
    assert host.device.type == "cpu" and host.tolist() == [1, 2]


def test_host_to_device_and_peer_copies(vcuda: Any, link: RecordingLink) -> None:
    big = torch.zeros(1024, 1024).to("cuda")
    h2d = link.launches[-1]
    assert h2d.family == Family.HOST_COPY and h2d.feats == (4 << 20, CopyDirection.H2D)
    assert big._a.host is None
    small = torch.arange(6, device="cuda")
    moved = small.to("cuda:1")
    p2p = link.launches[-1]
    assert p2p.family == Family.P2P and p2p.device == 1 and p2p.feats == (48, 0)
    assert is_virtual(moved, "cuda:1") and moved.tolist() == list(range(6))
    into = torch.empty(6, dtype=torch.long, device="cuda:1")
    into.copy_(small)
    assert into.tolist() == list(range(6))


def test_ops_of_framework_code(vcuda: Any, link: RecordingLink) -> None:
    @torch.library.custom_op("revati_test::scale", mutates_args=())
    def scale(x: torch.Tensor, f: float) -> torch.Tensor:
        return x * f

    @scale.register_fake
    def _(x: torch.Tensor, f: float) -> torch.Tensor:
        return torch.empty_like(x)

    assert scale(torch.ones(4, device="cuda"), 3.0).tolist() == [3.0] * 4
    big = torch.ops.revati_test.scale(torch.empty(4096, 4096, device="cuda"), 2.0)
    assert big.shape == (4096, 4096) and link.launches[-1].op == "revati_test::scale"
    emb = nn.Embedding(1000, 64, device="cuda")
    norm = nn.LayerNorm(64, device="cuda")
    with torch.inference_mode():
        y = F.softmax(norm(emb(torch.tensor([[1, 2, 3]], device="cuda"))), -1)
    assert y.shape == (1, 3, 64) and is_virtual(y)
    ops = [e.op for e in link.launches[-3:]]
    assert ops == ["aten::embedding", "aten::layer_norm", "aten::_softmax"] or \
        ops[-1] in ("aten::softmax", "aten::_softmax")


def test_views_and_addresses(vcuda: Any, link: RecordingLink) -> None:
    x = torch.empty(64, 64, device="cuda")
    assert x.data_ptr() != 0
    assert x[1].data_ptr() - x.data_ptr() == 64 * 4
    assert x.view(-1).view(torch.int8)[256:].data_ptr() - x.data_ptr() == 256
    y = torch.empty(64, 64, device="cuda")
    assert abs(y.data_ptr() - x.data_ptr()) >= 64 * 64 * 4
    n = len(link.launches)
    x.t().contiguous()[3:, ::2].unsqueeze(0).expand(2, -1, -1)
    assert [e.op for e in link.launches[n:]] == ["aten::clone"]


def test_streams_are_per_thread(vcuda: Any, link: RecordingLink) -> None:
    side = torch.cuda.Stream()
    seen = []
    with torch.cuda.stream(side):
        thread = threading.Thread(target=lambda: seen.append(torch.cuda.current_stream()))
        thread.start()
        thread.join()
        assert torch.cuda.current_stream() is side
    assert seen == [torch.cuda.default_stream()]


def test_an_invalid_view_raises_the_ops_own_error(vcuda: Any, link: RecordingLink) -> None:
    # Copying 11 rows into an empty slice: PyTorch's own shape error, as on a GPU (the
    # expand fails on meta), not a failure inside Revati. Twice: the failure is not cached.
    dst = torch.empty((32, 11, 128), device="cuda", dtype=torch.bfloat16)
    src = torch.empty((32, 11, 128), device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="expanded size"):
            dst[:, 11:, :] = src


def test_a_cuda_only_kernel_on_small_tensors(vcuda: Any, link: RecordingLink) -> None:
    """Attention on a tiny model: the flash kernel has no CPU implementation to compute small
    results with, so they are meta-backed, as large ones are (a tiny model crashed here)."""
    q, k, v = (torch.randn(1, 2, 4, 8, device="cuda") for _ in range(3))
    for _ in range(2):  # the second call takes the cached decision
        out = F.scaled_dot_product_attention(q, k, v)
        assert out.shape == (1, 2, 4, 8)
    attention = [e for e in link.launches if e.family == Family.ATTENTION]
    assert len(attention) == 2
    assert out._a.host is None and out._a.origin == "aten::_scaled_dot_product_flash_attention"


def test_uva_view_shares_host_memory_and_takes_no_device_memory(vcuda: Any,
                                                                 link: RecordingLink) -> None:
    from revati.adapters import cuda

    host = torch.zeros(3 << 20, dtype=torch.int32)  # 12 MiB: larger than any host-backed limit
    before = torch.cuda.memory_allocated()
    view = cuda.uva_view(host)
    assert is_virtual(view) and view.shape == host.shape
    assert torch.cuda.memory_allocated() == before  # pinned host memory, not the GPU's
    assert view.data_ptr() == host.data_ptr()  # UVA: one address for host and device
    host[5] = 42  # the host writes, the device view sees it (and the other way round)
    assert view[5].item() == 42
    view[7:9].fill_(3)
    assert host[7:9].tolist() == [3, 3]
    with pytest.raises(ValueError, match="CPU tensor"):
        cuda.uva_view(torch.zeros(2, device="cuda"))


def test_a_uva_views_slice_is_made_once_per_geometry(vcuda: Any, link: RecordingLink) -> None:
    """A serving engine slices its UVA buffers to the batch size at every step: the same
    slice is the same view, until the view or the buffer changes shape in place."""
    from revati.adapters import cuda

    host = torch.zeros(64, dtype=torch.int32)
    view = cuda.uva_view(host)
    with torch.inference_mode():
        a, b, c = view[:8], view[:8], view[:4]
        assert a is b and c is not a and c.shape == (4,)
        host[:8] = torch.arange(8)
        assert a.tolist() == list(range(8))  # live values, as before
        a.unsqueeze_(0)  # an in-place metadata change of the view: made again
        again = view[:8]
        assert again is not a and again.shape == (8,) and a.shape == (1, 8)
        view.resize_(16)  # ... or of the buffer
        after = view[:8]
        assert after is not again and after.shape == (8,)
        assert view[:8] is after
    with torch.no_grad():  # outside inference mode: a view of its own
        plain = view[:8]
        assert plain is not after and view[:8] is plain


def test_a_kept_buffers_slices_are_made_once_per_geometry(vcuda: Any,
                                                          link: RecordingLink) -> None:
    """A device buffer marked with keep_slices (vLLM's input buffers) hands out the same slice
    of it, with live values, until the buffer is reallocated in place; unmarked tensors and
    non-virtual ones are left alone."""
    from revati.adapters import cuda

    buf = torch.zeros(32, dtype=torch.int32, device="cuda")
    other = torch.zeros(32, dtype=torch.int32, device="cuda")
    cuda.keep_slices(buf)
    cuda.keep_slices(torch.zeros(4))  # a CPU tensor: nothing to keep
    with torch.inference_mode():
        a = buf[:4]
        assert buf[:4] is a and other[:4] is not other[:4]
        buf[:4] = torch.arange(4, dtype=torch.int32, device="cuda")
        assert a.tolist() == [0, 1, 2, 3]
        buf.set_(torch.ones(64, dtype=torch.int32, device="cuda"))  # a new allocation
        b = buf[:4]
        assert b is not a and b.tolist() == [1, 1, 1, 1]


def test_host_array_is_made_once_per_values_view(vcuda: Any, link: RecordingLink) -> None:
    """Host stand-ins of kernels read a step's control tensors as numpy arrays several times a
    step: the same array while the tensor's values view stands, a new one that sees the new
    values after an in-place change of its geometry."""
    from revati.adapters.cuda.tensor import host_array

    t = torch.zeros(8, dtype=torch.int32, device="cuda")
    first = host_array(t)
    assert host_array(t) is first
    first[2] = 5  # a writable view of the values
    assert t.tolist()[2] == 5
    t.resize_(16)
    after = host_array(t)
    assert after is not first and after.shape == (16,)
    t.fill_(3)
    assert after.tolist() == [3] * 16 and host_array(t) is after


def test_list_views_share_their_base(vcuda: Any, link: RecordingLink) -> None:
    """unbind/split/chunk return views (`Tensor(a)[]`): no new memory, values shared, and in
    inference mode a view of a normal tensor stays a normal tensor (autograd sets its version
    counter; vLLM's V2 runner iterates such a tensor while capturing graphs)."""
    base = torch.zeros(2, 1 << 20, dtype=torch.int64, device="cuda")  # meta-backed
    small = torch.zeros(4, 6, dtype=torch.int32, device="cuda")  # host-backed
    before = torch.cuda.memory_allocated()
    with torch.inference_mode():
        rows = list(base)
        parts = small.split(2)
        chunks = small.chunk(3, dim=1)
    assert torch.cuda.memory_allocated() == before
    assert [r.data_ptr() for r in rows] == [base.data_ptr(), base.data_ptr() + (8 << 20)]
    assert not any(r.is_inference() for r in rows)
    parts[1].fill_(5)
    chunks[2].fill_(7)
    values = small.tolist()
    assert values[2] == [5, 5, 5, 5, 7, 7] and values[0] == [0, 0, 0, 0, 7, 7]


def test_a_free_list_sliced_over_and_over_stays_one_view_deep(vcuda: Any,
                                                                link: RecordingLink) -> None:
    """`free = free[n:]` again and again (SGLang's KV allocator): PyTorch chains a view
    function per view of a Python-dispatch tensor, each holding the view it was taken from,
    so a chain keeps every slice alive and costs its length per slice. Deep indexings are
    taken off the base: earlier slices die, values and writes stay the storage's own."""
    import gc
    import weakref

    first = torch.arange(1, 3001, dtype=torch.int64, device="cuda")
    free, early = first, None
    for i in range(1000):
        taken = free[:2]
        free = free[2:]
        if i == 20:
            early = weakref.ref(free)
    gc.collect()
    assert early is not None and early() is None  # no chain holds the 21st slice
    assert free._base is first and free.shape == (1000,)
    assert taken.tolist() == [1999, 2000] and free[:3].tolist() == [2001, 2002, 2003]
    free[1] = -1  # a write through the deep view lands in the storage
    assert first[2001].item() == -1 and free[1].item() == -1


@pytest.mark.parametrize(("sku", "cudnn", "kernel"), [
    ("h100", True, "aten::_scaled_dot_product_cudnn_attention"),
    ("h100", False, "aten::_scaled_dot_product_efficient_attention"),
    ("a100", True, "aten::_scaled_dot_product_efficient_attention"),
])
def test_masked_attention_runs_the_kernel_torch_picks_on_the_sku(
        vcuda: Any, link: RecordingLink, monkeypatch: pytest.MonkeyPatch, sku: str,
        cudnn: bool, kernel: str) -> None:
    """With a mask (transformers' paged|sdpa passes one), torch 2.11 ran cuDNN's attention on
    an H200 (results/h200-full/kernels.csv); before Hopper, or with cuDNN's turned off, the
    memory-efficient kernel. One ATTENTION launch either way, with the mask's features."""
    from revati.adapters.cuda.state import S
    from revati.predictors.skus import device_spec

    monkeypatch.setattr(S, "spec", device_spec(sku))
    monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: cudnn)
    q = torch.randn(1, 4, 8, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 4, 24, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.zeros(1, 1, 8, 24, device="cuda", dtype=torch.bfloat16)
    out = F.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    assert out.shape == (1, 4, 8, 64)
    [attention] = [e for e in link.launches if e.family == Family.ATTENTION]
    assert attention.op == kernel
    assert attention.feats == (1, 8, 24, 24, 24 * 24, 4, 4, 64, 0)


@pytest.mark.parametrize(("cost_ns", "expected_ns"), [
    (50_000, 5 * 50_000 + 10_000),  # host-bound: the last launch leaves at 250 us, runs 10 us
    (1_000, 1_000 + 5 * 10_000),  # device-bound: the host's 5 us hide behind 50 us of kernels
])
def test_host_costs_stamp_launches_later_and_are_spent_before_a_sync(
        vcuda: Any, link: RecordingLink, cost_ns: int, expected_ns: int) -> None:
    """A launch of an op with a host cost leaves the host that much later (its launch time),
    and the thread spends what it owes before it waits: the wait ends at max(host, device)."""
    x = torch.empty(64, device="cuda")
    start = len(link.launches)
    vcuda.install(SKU, NUM_GPUS, host_costs={"aten::add_": cost_ns / 1e9})
    try:
        for _ in range(5):
            x.add_(1.0)
        stamps = [e.t_ns for e in link.launches[start:]]
        assert stamps == [cost_ns * (i + 1) for i in range(5)]
        assert link.clock == 0  # not spent yet: the thread has not waited
        torch.cuda.synchronize()
        assert link.clock == expected_ns
    finally:
        vcuda.install(SKU, NUM_GPUS, host_costs={})


@pytest.mark.parametrize("index", [
    slice(None, 3), slice(2, None), slice(-3, None), slice(1, 6, 2), slice(5, 2),
    slice(20, None), slice(None, -20), (slice(None), slice(1, 3)), (1, slice(None, 2)),
    (-1,), 2, (slice(0, 4, 3), -2), (Ellipsis, slice(1, 3)), (Ellipsis, 2), (1, Ellipsis),
    (slice(1, 3), Ellipsis, slice(0, 2)), (Ellipsis,), (Ellipsis, 1, 2),
])
@pytest.mark.parametrize("dtype", [torch.int32, torch.bfloat16])
def test_basic_indexing_without_autograd_gives_torchs_own_views(
        vcuda: Any, link: RecordingLink, dispatched: list[str], index: Any, dtype: Any) -> None:
    """Slices and integers under no_grad / inference mode (the serving loops' hot path) are
    computed without the dispatcher: same geometry as PyTorch's, the same storage, no
    launch; host-backed (int32) views read and write the storage's own values."""
    cpu = torch.arange(6 * 5, dtype=torch.float32).reshape(6, 5).to(dtype)
    big = torch.zeros(6, 1 << 18, dtype=dtype, device="cuda")[:, :5]  # meta-backed
    for grad_off in (torch.no_grad, torch.inference_mode):
        small = cpu.cuda()
        dispatched.clear()
        with grad_off():
            want = cpu[index]
            got, view_of_big = small[index], big[index]
        assert dispatched == []
        assert (got.shape, got.stride(), got.storage_offset()) == (
            want.shape, want.stride(), want.storage_offset())
        expect_big = torch.empty_strided(big.shape, big.stride(), device="meta")[index]
        assert (view_of_big.shape, view_of_big.stride()) == (expect_big.shape,
                                                             expect_big.stride())
        assert view_of_big.data_ptr() == big.data_ptr() + (
            expect_big.storage_offset() - big.storage_offset()) * big.element_size()
        if dtype is torch.int32:
            assert got.cpu().tolist() == want.tolist()
            if got.numel():
                got.fill_(-7)
                assert (small.cpu() == -7).sum().item() == got.numel()


def test_indexing_that_is_not_basic_takes_torchs_path(vcuda: Any, link: RecordingLink) -> None:
    t = torch.arange(10, dtype=torch.int64, device="cuda")
    with torch.no_grad():
        assert t[torch.tensor([1, 3])].tolist() == [1, 3]
        assert t[None, 2:4].shape == (1, 2)
        assert t[..., None].shape == (10, 1)
        assert t[..., ...].shape == (10,)  # PyTorch takes two
        with pytest.raises(IndexError):
            t[10]
        with pytest.raises(ValueError):
            t[::-1]
        with pytest.raises(IndexError):
            t[1, 2]


def test_a_parameters_slice_under_no_grad_needs_no_grad(vcuda: Any, link: RecordingLink) -> None:
    weight = nn.Parameter(torch.zeros(4, 3, device="cuda"))
    with torch.no_grad():
        part = weight[1:3]
    assert not part.requires_grad and part.shape == (2, 3)
    assert weight[1:3].requires_grad  # with grad on, PyTorch's own path: a view autograd knows
    assert weight[1:3]._base is weight


@pytest.mark.parametrize("index", [slice(1, 4), (slice(None), 2), -1,
                                   (slice(0, 6, 2), slice(1, 3)), (Ellipsis, slice(0, 2))])
def test_basic_assignment_without_autograd_is_one_fill_or_copy(
        vcuda: Any, link: RecordingLink, dispatched: list[str], index: Any) -> None:
    """`t[index] = number` / `= tensor` under no_grad: PyTorch's own semantics (the view,
    then fill_ / copy_ with broadcasting), dispatched as that one op."""
    want = torch.arange(30, dtype=torch.int32).reshape(6, 5)
    got = want.cuda()
    row = torch.tensor([7], dtype=torch.int32)
    row_v = row.cuda()
    with torch.no_grad():
        dispatched.clear()
        want[index] = -3
        got[index] = -3
        assert dispatched == ["aten::fill_"]
        dispatched.clear()
        want[index] = row
        got[index] = row_v
        assert dispatched == ["aten::copy_"]
    assert got.cpu().tolist() == want.tolist()


def test_an_assignment_by_index_tensors_is_one_index_put(
        vcuda: Any, link: RecordingLink, dispatched: list[str]) -> None:
    """`t[ids] = v` and `t[rows, cols] = v` with integer index tensors under no_grad (SGLang's
    request-to-token table and overlap buffers, every step): PyTorch's own result, dispatched
    as the one index_put_ its indexing ends in. Other indices and values take PyTorch's own
    path, errors included."""
    want = torch.zeros(6, 5, dtype=torch.int64)
    got = want.cuda()
    rows, cols = torch.tensor([4, 0]), torch.tensor([1, 3], dtype=torch.int32)
    rows_v, cols_v = rows.cuda(), cols.cuda()
    with torch.no_grad():
        for index, index_v, value in [(rows, rows_v, torch.tensor([7, 8, 9, 10, 11])),
                                      (rows, rows_v, torch.tensor([[1], [2]])),  # broadcast
                                      ((rows, cols), (rows_v, cols_v), torch.tensor([5, 6]))]:
            value_v = value.cuda()
            dispatched.clear()
            want[index] = value
            got[index_v] = value_v
            assert dispatched == ["aten::index_put_"]
        assert got.cpu().tolist() == want.tolist()
        value_v = torch.tensor([[[3] * 5] * 2]).cuda()
        dispatched.clear()
        got[rows_v] = value_v  # a leading one to drop first: PyTorch's own path
        assert "aten::index_put_" in dispatched and dispatched[0] != "aten::index_put_"
        assert got[4].cpu().tolist() == [3] * 5
        with pytest.raises(RuntimeError, match="dtypes match"):  # as PyTorch says it
            got[rows_v] = torch.ones(5, dtype=torch.int32).cuda()
        want[rows] = 3
        mask = torch.tensor([True, False] * 3)
        want[mask] = torch.full((5,), -1)
        got[mask.cuda()] = torch.full((5,), -1).cuda()  # a mask: PyTorch's own path
        assert got.cpu().tolist() == want.tolist()


def test_a_dtype_conversion_is_one_copy_kernel(vcuda: Any, link: RecordingLink,
                                               dispatched: list[str]) -> None:
    """`t.to(dtype)` under inference mode: `t` itself where the dtype is the same, else one
    `_to_copy` with the converted values, without the composite's second trip through the
    dispatcher."""
    ids = torch.tensor([3, 70_000, -2]).cuda()
    with torch.inference_mode():
        assert ids.to(torch.int64) is ids
        dispatched.clear()
        n = len(link.launches)
        small = ids.to(torch.int32)
        assert dispatched == ["aten::to"]
        assert [e.op for e in link.launches[n:]] == ["aten::_to_copy"]
        assert small.dtype == torch.int32 and small.tolist() == [3, 70_000, -2]
        copied = ids.to(torch.int64, copy=True)
        assert copied is not ids and copied.tolist() == [3, 70_000, -2]
        half = ids.to(torch.float16, non_blocking=True)  # 70,000 overflows, as on a GPU
        assert half.tolist() == torch.tensor([3, 70_000, -2]).to(torch.float16).tolist()
