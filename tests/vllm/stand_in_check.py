"""Revati's stand-ins for vLLM's state-carrying Triton kernels against the kernels themselves.

Run as a script (tests/vllm/test_triton_stand_ins.py does): vLLM's own launch wrappers run
each kernel on the same seeded batches, first through Triton's interpreter (the real kernel,
on CPU tensors: TRITON_INTERPRET must be set before Triton is imported, hence a process of its
own), then after Revati's overrides are registered, once vectorized and once one row at a
time (triton_kernels.ROW_LOOP_ROWS); every tensor must agree.
Prints one `ok NAME` line per kernel.
"""

from __future__ import annotations

import copy
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np
import torch
from triton.backends.nvidia import driver

# vLLM takes Triton as present only with an active driver; the interpreter needs none.
driver.CudaDriver.is_active = staticmethod(lambda: True)

from vllm.v1.worker.gpu import buffer_utils  # noqa: E402
from vllm.v1.worker.gpu import input_batch as ib  # noqa: E402

I32, I64 = torch.int32, torch.int64
R, LEN, TOKENS, VOCAB = 12, 64, 96, 50  # state rows, max_model_len, max tokens, vocab


def batch(rng: np.random.Generator, n: int, drafts: bool, decodes_only: bool = False,
          ) -> dict[str, torch.Tensor]:
    """A step of `n` rows over R request slots: decodes, chunked prefills and last prefill
    chunks (only decodes when `decodes_only`), with up to 2 draft tokens per decode when
    `drafts`."""
    idx = rng.permutation(R)[:n]
    prefill = np.zeros(R, np.int32)
    done = np.zeros(R, np.int32)
    q = np.zeros(n, np.int64)
    logits = np.ones(n, np.int64)
    for b, r in enumerate(idx):
        prefill[r] = rng.integers(4, 20)
        kind = 0 if decodes_only else rng.integers(3)
        if kind == 0:  # decoding, maybe with drafts
            done[r] = prefill[r] + rng.integers(0, 10)
            logits[b] = 1 + (rng.integers(0, 3) if drafts else 0)
            q[b] = logits[b]
        elif kind == 1:  # a chunk of the prefill that does not finish it
            done[r] = rng.integers(0, prefill[r] - 2)
            q[b] = rng.integers(1, prefill[r] - done[r])
        else:  # the prefill's last chunk
            done[r] = rng.integers(0, prefill[r] - 1)
            q[b] = prefill[r] - done[r]
    qsl = np.concatenate([[0], np.cumsum(q)]).astype(np.int32)
    cu = np.concatenate([[0], np.cumsum(logits)]).astype(np.int32)
    seq = np.full(R, 99, np.int32)  # stale lengths past the batch: the kernel zeroes them
    seq[:n] = done[idx] + q
    return {
        "idx": torch.from_numpy(idx.astype(np.int64)),
        "qsl": torch.from_numpy(qsl),
        "cu": torch.from_numpy(cu),
        "prefill": torch.from_numpy(prefill),
        "done": torch.from_numpy(done),
        "seq": torch.from_numpy(seq),
        "tokens": torch.from_numpy(rng.integers(0, VOCAB, (R, LEN)).astype(np.int32)),
        "total": torch.from_numpy((done + rng.integers(0, 3, R)).astype(np.int32)),
        "last": torch.from_numpy(rng.integers(0, VOCAB, (R, 1))),
        "draft": torch.from_numpy(rng.integers(0, VOCAB, (R, 2))),
        "sampled": torch.from_numpy(rng.integers(0, VOCAB, (n, 3))),
        "num_sampled": torch.from_numpy(rng.integers(0, 4, n).astype(np.int32)),
        "num_rejected": torch.from_numpy(rng.integers(0, 2, n).astype(np.int32)),
        "bins": torch.zeros(R, VOCAB, dtype=I32),
        "ids": torch.from_numpy(rng.integers(0, VOCAB, TOKENS).astype(np.int32)),
        "pos": torch.full((TOKENS,), -5, dtype=I64),
        "ahead": torch.full((2, R), -3, dtype=I32),
        "rows": torch.tensor([3, 0, 7], dtype=I32),
        "starts": torch.tensor([5, 0, 60], dtype=I32),
        "contents": torch.arange(100, 109, dtype=I32),
        "cu_lens": torch.tensor([4, 5, 9], dtype=I32),
        "state2d": torch.zeros(R, LEN, dtype=I32),
        "state1d": torch.zeros(R, dtype=I32),
        "one": torch.tensor([2], dtype=I32),
        "start0": torch.tensor([0], dtype=I32),
        "elem": torch.tensor([77], dtype=I32),
        "cu1": torch.tensor([1], dtype=I32),
    }


def cases(b: dict[str, torch.Tensor]) -> dict[str, object]:
    """Each kernel, launched the way the V2 runner launches it, on batch `b` (in place)."""
    n = b["idx"].shape[0]
    total_logits = int(b["cu"][n])
    masked = b["idx"].clone()
    if n > 1:
        masked[n // 2] = -1  # a row post_update must skip
    return {
        "prepare_prefill_inputs": lambda: ib.prepare_prefill_inputs(
            b["ids"], b["ahead"], b["idx"], b["qsl"], b["tokens"], b["prefill"], b["done"]),
        "prepare_pos_seq_lens": lambda: ib.prepare_pos_seq_lens(
            b["idx"], b["qsl"], b["done"], b["pos"], b["seq"]),
        "combine_sampled_and_draft_tokens": lambda: ib.combine_sampled_and_draft_tokens(
            b["ids"], b["idx"], b["last"], b["qsl"], b["seq"], b["prefill"], b["draft"],
            b["cu"], total_logits),
        "get_num_sampled_and_rejected": lambda: ib.get_num_sampled_and_rejected(
            b["num_sampled"], b["seq"], b["cu"], b["idx"], b["prefill"]),
        "post_update": lambda: ib.post_update(
            masked, b["done"], b["last"], b["bins"], b["sampled"], b["num_sampled"],
            b["num_rejected"], b["qsl"], b["tokens"], b["total"]),
        "post_update_num_computed_tokens": lambda: ib.post_update_num_computed_tokens(
            b["idx"], b["done"], b["qsl"]),
        "expand_idx_mapping": lambda: ib.expand_idx_mapping(b["idx"], total_logits, b["cu"], 4),
        "apply_write 2-D": lambda: buffer_utils._apply_write_kernel[(3,)](
            b["state2d"], b["state2d"].stride(0), b["rows"], b["starts"], b["contents"],
            b["cu_lens"], None, BLOCK_SIZE=1024, MULTI_GROUP=False),
        "apply_write 1-D": lambda: buffer_utils._apply_write_kernel[(1,)](
            b["state1d"], 1, b["one"], b["start0"], b["elem"], b["cu1"], None,
            BLOCK_SIZE=1024, MULTI_GROUP=False),
    }


def run(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, object]]:
    results = []
    for b in batches:
        for name, call in cases(b).items():
            results.append({"name": name, "out": call(), "state": copy.deepcopy(b)})
    return results


def same(x: object, y: object) -> bool:
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, (tuple, list)):
        return len(x) == len(y) and all(same(a, c) for a, c in zip(x, y, strict=True))
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    return x == y


def main() -> int:
    rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    batches = [batch(rng, n, drafts) for n in (1, 3, 6, 9) for drafts in (False, True)]
    # one token a row: the stand-ins' decode-step shortcuts
    batches += [batch(rng, n, drafts=False, decodes_only=True) for n in (1, 4, 12)]
    reference = run(copy.deepcopy(batches))  # Triton's interpreter: the kernels themselves

    from revati.adapters import cuda
    from revati.adapters.vllm import triton_kernels
    from tests.cuda.conftest import RecordingLink

    link = RecordingLink()
    cuda.install("h100", 1, link=link)
    triton_kernels.register()
    failed = 0
    # every batch through both forms of the stand-ins: vectorized, and one row at a time
    for form, rows in (("vectorized", 0), ("per-row", 1 << 30)):
        triton_kernels.ROW_LOOP_ROWS = rows
        revati = run(copy.deepcopy(batches))
        for ref, got in zip(reference, revati, strict=True):
            if not (same(ref["out"], got["out"]) and same(ref["state"], got["state"])):
                failed += 1
                print(f"MISMATCH {ref['name']} ({form})", file=sys.stderr)
                for key, value in ref["state"].items():
                    if not torch.equal(value, got["state"][key]):
                        print(f"  {key}: kernel {value.tolist()}", file=sys.stderr)
                        print(f"  {key}: revati {got['state'][key].tolist()}", file=sys.stderr)
    names = dict.fromkeys(r["name"] for r in reference)
    launched = {e.op for e in link.launches}
    for name in names:
        print(f"ok {name}" if not failed else f"ran {name}")
    print(f"launches {len(link.launches)} ops {sorted(launched)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
