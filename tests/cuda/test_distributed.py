"""torch.distributed on virtual tensors: collective launch events, no data moved."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")
import torch.distributed as dist  # noqa: E402

from revati.predictors.launch import Collective, Family  # noqa: E402
from tests.cuda.conftest import NUM_GPUS, SKU, RecordingLink  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::FutureWarning")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def world(vcuda: Any, link: RecordingLink) -> Iterator[None]:
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    # "nccl" is what GPU serving code asks for; without NCCL it is the revati backend
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_collectives_become_collective_launches(world: None, link: RecordingLink) -> None:
    x = torch.empty(64, 4096, dtype=torch.bfloat16, device="cuda")
    dist.all_reduce(x)
    out = torch.empty(64, 4096, dtype=torch.bfloat16, device="cuda")
    dist.all_gather_into_tensor(out, x)
    dist.reduce_scatter_tensor(x, out)
    dist.broadcast(x, src=0)
    work = dist.all_reduce(x, async_op=True)
    work.wait()
    kinds = [(Collective(ev.feats[0]), ev.feats[1], ev.feats[2]) for ev, _, _ in link.collectives]
    size = 64 * 4096 * 2
    assert kinds == [(Collective.ALL_REDUCE, size, 1), (Collective.ALL_GATHER, size, 1),
                     (Collective.REDUCE_SCATTER, size, 1), (Collective.BROADCAST, size, 1),
                     (Collective.ALL_REDUCE, size, 1)]
    groups = {group for _, group, _ in link.collectives}
    assert len(groups) == 1 and all(rank == 0 for _, _, rank in link.collectives)
    ev = link.collectives[0][0]
    assert ev.family == Family.COLLECTIVE and ev.dtype == "bf16" and ev.stream == 0
    assert dist.get_backend() == "revati"


def test_host_tensors_still_use_gloo(world: None, link: RecordingLink) -> None:
    cpu = torch.ones(4)
    dist.all_reduce(cpu)
    assert cpu.tolist() == [1.0] * 4 and not link.collectives
    small = torch.arange(4, device="cuda")
    gathered = torch.zeros(4, dtype=torch.long, device="cuda")
    dist.all_gather_into_tensor(gathered, small)
    assert gathered.tolist() == [0, 1, 2, 3]  # this rank's own shard is cheap to keep


def _rank(rank: int, port: int, results: Any) -> None:
    from revati.adapters import cuda

    link = RecordingLink()
    cuda.install(SKU, NUM_GPUS, link=link)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.cuda.set_device(rank)
    x = torch.empty(1024, 1024, device="cuda")
    dist.all_reduce(x)
    sub = dist.new_group([0, 1])
    dist.all_reduce(x, group=sub)
    if rank == 0:
        dist.send(x, dst=1)
    else:
        dist.recv(x, src=0)
    dist.barrier()
    results.put([(rank, group, r, ev.device, tuple(ev.feats))
                 for ev, group, r in link.collectives])
    dist.destroy_process_group()


def test_two_ranks_agree_on_groups(vcuda: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(sorted((items[0][0], items) for items in (results.get(timeout=120)
                                                           for _ in procs)))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    r0, r1 = got[0], got[1]
    assert [g for _, g, _, _, _ in r0] == [g for _, g, _, _, _ in r1]  # same keys, same order
    assert len({g for _, g, _, _, _ in r0}) == 3  # world, sub-group, the send/recv pair
    assert [feats for *_, feats in r0[:2]] == [feats for *_, feats in r1[:2]]
    assert r0[0][4] == (Collective.ALL_REDUCE, 4 << 20, 2)
    assert (r0[2][4], r1[2][4]) == ((4 << 20, 1), (4 << 20, 0))  # P2P (bytes, peer): the send ...
    assert [r for _, _, r, _, _ in r0] == [0, 0, 0]
    assert [r for _, _, r, _, _ in r1] == [1, 1, 1]  # ... and the recv: ranks 0 and 1
    assert [d for _, _, _, d, _ in r1] == [1, 1, 1]  # rank 1 works on its own device


class _Group:
    """A process group's face as `custom_all_reduce` reads it."""

    def __init__(self, ranks: int) -> None:
        self.ranks, self.group_name = ranks, f"tp{ranks}"

    def size(self) -> int:
        return self.ranks

    def rank(self) -> int:
        return 1


def test_the_frameworks_own_all_reduce_is_named_where_they_would_run_it(
        vcuda: Any, link: RecordingLink) -> None:
    """vLLM and SGLang run their own all-reduce kernel for a tensor-parallel group's tensors up
    to 8 MiB on 2, 4, 6 or 8 GPUs, in 16-bit or fp32 whole 16-byte units; anything else
    (one launch fewer here) goes NCCL's way."""
    from revati.adapters.cuda.distributed import custom_all_reduce

    decode = torch.empty(1, 8192, dtype=torch.bfloat16, device="cuda")
    n = len(link.collectives)
    assert custom_all_reduce(decode, _Group(4))
    (ev, group, rank), = link.collectives[n:]
    assert (ev.family, ev.op, ev.feats) == (Family.COLLECTIVE, "custom:all_reduce",
                                            (Collective.CUSTOM_ALL_REDUCE, 16384, 4))
    assert group.endswith("/tp4") and rank == 1
    largest = torch.empty(512, 8192, dtype=torch.bfloat16, device="cuda")  # 8 MiB
    assert custom_all_reduce(largest, _Group(8))
    refused = [torch.empty(513, 8192, dtype=torch.bfloat16, device="cuda"),  # over 8 MiB
               torch.empty(1, 8192, dtype=torch.int32, device="cuda"),
               torch.empty(3, dtype=torch.bfloat16, device="cuda"),  # 6 bytes
               torch.empty(8, 8192, dtype=torch.bfloat16, device="cuda")[:, ::2],
               torch.empty(1, 8192, dtype=torch.bfloat16)]  # on the host
    n = len(link.collectives)
    assert not any(custom_all_reduce(t, _Group(4)) for t in refused)
    assert not custom_all_reduce(decode, _Group(3)) and not custom_all_reduce(decode, _Group(16))
    assert len(link.collectives) == n
