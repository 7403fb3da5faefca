"""The torch.cuda / torch.accelerator / NVML surface reports the emulated SKU."""

from __future__ import annotations

import gc
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")

from revati.predictors import skus  # noqa: E402
from revati.predictors.launch import Family  # noqa: E402
from tests.cuda.conftest import NUM_GPUS, RecordingLink  # noqa: E402

pytestmark = pytest.mark.torch

H100 = skus.spec("h100")


def test_devices(vcuda: Any, link: RecordingLink) -> None:
    assert torch.cuda.is_available() and torch.cuda.is_initialized()
    assert torch.cuda.device_count() == NUM_GPUS
    assert torch.cuda.get_device_name() == "NVIDIA H100 80GB HBM3"
    assert torch.cuda.get_device_capability(1) == (9, 0)
    props = torch.cuda.get_device_properties(0)
    assert props.total_memory == H100["memory_bytes"]
    assert props.multi_processor_count == 132
    assert props.L2_cache_size == H100["l2_bytes"]
    assert (props.major, props.minor) == (9, 0)
    assert torch.cuda.is_bf16_supported()
    assert "sm_90" in torch.cuda.get_arch_list()
    assert torch.backends.cuda.is_built()
    assert torch.version.cuda is not None


def test_current_device(vcuda: Any, link: RecordingLink) -> None:
    assert torch.cuda.current_device() == 0
    with torch.cuda.device(1):
        assert torch.cuda.current_device() == 1
        assert torch.empty(3, device="cuda").device == torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
    torch.cuda.set_device("cuda:1")
    assert torch.accelerator.current_device_index() == 1
    torch.accelerator.set_device_index(0)
    assert torch.cuda.current_device() == 0
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device(NUM_GPUS)
    x = torch.ones(2, device="cuda:1")
    with torch.cuda.device_of(x):
        assert torch.cuda.current_device() == 1


def test_accelerator(vcuda: Any, link: RecordingLink) -> None:
    acc = torch.accelerator
    assert acc.is_available() and acc.device_count() == NUM_GPUS
    assert acc.current_accelerator() == torch.device("cuda")
    assert acc.current_stream() is torch.cuda.current_stream()
    assert acc.get_memory_info() == torch.cuda.mem_get_info()
    assert acc.memory_allocated() == torch.cuda.memory_allocated()
    x = torch.ones(1024, device="cuda")
    acc.synchronize()
    assert link.syncs[-1] == ("stream", (0, None))
    del x


def test_memory_counters_follow_the_allocator(vcuda: Any, link: RecordingLink) -> None:
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(1)
    free0, total = torch.cuda.mem_get_info(1)
    assert total == H100["memory_bytes"]
    torch.cuda.reset_peak_memory_stats(1)
    x = torch.empty(1000, 1000, device="cuda:1")  # 4,000,000 bytes -> 512-byte blocks
    assert torch.cuda.memory_allocated(1) - base == 4_000_256
    assert torch.cuda.memory_reserved(1) >= torch.cuda.memory_allocated(1)
    assert torch.cuda.mem_get_info(1)[0] < free0
    view = x[10:20]
    assert torch.cuda.memory_allocated(1) - base == 4_000_256  # a view allocates nothing
    del x
    assert torch.cuda.memory_allocated(1) - base == 4_000_256  # the view keeps the block
    del view
    assert torch.cuda.memory_allocated(1) == base
    assert torch.cuda.max_memory_allocated(1) - base == 4_000_256
    stats = torch.cuda.memory_stats(1)
    assert stats["allocated_bytes.all.peak"] == torch.cuda.max_memory_allocated(1)
    assert stats["reserved_bytes.all.current"] == torch.cuda.memory_reserved(1)
    torch.cuda.empty_cache()
    assert torch.cuda.mem_get_info(1)[0] == free0


def test_a_cpu_module_moved_onto_a_virtual_gpu(vcuda: Any, link: RecordingLink) -> None:
    """`module.to("cuda")` on a module built on the CPU (a model loaded by transformers'
    from_pretrained, say): each parameter object becomes a virtual tensor in place, so weights
    tied between modules stay one parameter, counted once; the move launches its copies and
    the module runs. (It used to leave bare `cuda` tensors that no op could run on.)"""
    from revati.adapters.cuda.tensor import VirtualTensor

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(256, 256, bias=False)
            self.b = torch.nn.Linear(256, 256)
            self.b.weight = self.a.weight
            self.b.bias.requires_grad_(False)

    gc.collect()
    base = torch.cuda.memory_allocated()
    m = Tied()
    weight, bias = m.a.weight, m.b.bias
    m.to("cuda")
    assert m.a.weight is weight and m.b.weight is weight and m.b.bias is bias
    assert type(weight) is VirtualTensor and isinstance(weight, torch.nn.Parameter)
    assert weight.device == torch.device("cuda", 0) and weight.requires_grad
    assert not bias.requires_grad
    assert torch.cuda.memory_allocated() - base == 256 * 256 * 4 + 1024  # two blocks, once
    assert [ev.family for ev in link.launches[-2:]] == [Family.HOST_COPY] * 2
    assert m.b(m.a(torch.ones(2, 256, device="cuda"))).shape == (2, 256)
    m.to(torch.bfloat16)  # virtual to virtual: PyTorch's own move, in place
    assert m.a.weight is weight and weight.dtype == torch.bfloat16


def test_oom_message(vcuda: Any, link: RecordingLink) -> None:
    with pytest.raises(torch.OutOfMemoryError) as info:
        torch.empty(100 << 30, dtype=torch.uint8, device="cuda")
    text = str(info.value)
    assert text.startswith("CUDA out of memory. Tried to allocate 100.00 GiB. GPU 0 has a "
                           "total capacity of 79.19 GiB of which ")
    assert "is reserved by PyTorch but unallocated" in text
    assert isinstance(info.value, torch.cuda.OutOfMemoryError)


def test_random_state(vcuda: Any, link: RecordingLink) -> None:
    torch.cuda.manual_seed(1234)
    a = torch.rand(8, device="cuda").tolist()
    torch.cuda.manual_seed(1234)
    b = torch.rand(8, device="cuda").tolist()
    assert a == b
    g = torch.Generator(device="cuda")
    assert g.device == torch.device("cuda", 0)
    g.manual_seed(7)
    c = torch.randn(4, device="cuda", generator=g)
    assert c.device.type == "cuda"
    assert isinstance(torch.default_generator, torch.Generator)
    assert torch.cuda.get_rng_state().dtype == torch.uint8


def test_rng_state_reads_as_a_cuda_generators(vcuda: Any, link: RecordingLink) -> None:
    """A CUDA generator's state is Philox's seed and offset, 16 bytes, and code reads them
    (DTensor's random init moves the offset per shard): the virtual one reads and writes
    the same, and one state draws the same values again. The accelerator is cuda to code that
    asks torch._C, as on a GPU machine."""
    torch.cuda.manual_seed(1234)
    state = torch.cuda.get_rng_state()
    assert state.dtype == torch.uint8 and state.numel() == 16
    assert state.view(torch.int64).tolist() == [1234, 0] and torch.cuda.initial_seed() == 1234
    first = torch.rand(8, device="cuda").tolist()
    torch.cuda.set_rng_state(state)  # back to where manual_seed left it
    assert torch.rand(8, device="cuda").tolist() == first
    moved = state.clone()
    moved[8:] = torch.tensor([64], dtype=torch.int64).view(torch.uint8)
    torch.cuda.set_rng_state(moved)
    assert torch.cuda.get_rng_state().view(torch.int64).tolist() == [1234, 64]
    a = torch.rand(8, device="cuda").tolist()
    torch.cuda.set_rng_state(moved)
    assert torch.rand(8, device="cuda").tolist() == a
    torch.cuda.set_rng_state(state)
    assert torch.rand(8, device="cuda").tolist() != a  # another offset, other values
    with torch.random.fork_rng(devices=[0], device_type="cuda"):
        torch.cuda.manual_seed(99)
    assert torch.cuda.initial_seed() == 1234
    g = torch.Generator(device="cuda").manual_seed(2**64 - 1)  # a seed past int64
    assert g.initial_seed() == 2**64 - 1 and g.get_state().numel() == 16
    g.set_state(g.get_state())
    assert g.initial_seed() == 2**64 - 1
    with pytest.raises(RuntimeError, match="16 bytes"):
        torch.cuda.set_rng_state(torch.zeros(5056, dtype=torch.uint8))
    assert torch._C._get_accelerator() == torch.device("cuda")


def test_nvtx_and_misc(vcuda: Any, link: RecordingLink) -> None:
    torch.cuda.nvtx.range_push("step")
    torch.cuda.nvtx.range_pop()
    with torch.cuda.nvtx.range("step"):
        pass
    assert torch.cuda.current_blas_handle() == 0
    assert not torch.cuda.is_current_stream_capturing()


def test_nvml_stands_in_for_pynvml(vcuda: Any, link: RecordingLink) -> None:
    import pynvml

    from revati.adapters.cuda import nvml

    assert pynvml is nvml
    pynvml.nvmlInit()
    try:
        assert pynvml.nvmlDeviceGetCount() == NUM_GPUS
        handle = pynvml.nvmlDeviceGetHandleByIndex(1)
        assert pynvml.nvmlDeviceGetName(handle) == "NVIDIA H100 80GB HBM3"
        assert pynvml.nvmlDeviceGetCudaComputeCapability(handle) == (9, 0)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        free, total = torch.cuda.mem_get_info(1)
        assert (info.total, info.free, info.used) == (total, free, total - free)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        assert pynvml.nvmlDeviceGetHandleByUUID(uuid) == handle
        other = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetP2PStatus(
            handle, other, pynvml.NVML_P2P_CAPS_INDEX_NVLINK) == pynvml.NVML_P2P_STATUS_OK
        with pytest.raises(pynvml.NVMLError):
            pynvml.nvmlDeviceGetHandleByIndex(NUM_GPUS)
    finally:
        pynvml.nvmlShutdown()
