"""Stand-ins for the Triton kernels on the hot paths of vLLM's model runners, registered
through vLLM's kernel-override hook (`register_kernels`), per worker.

No Triton kernel runs on a virtual GPU. Virtual CUDA's catch-all (`revati.adapters.cuda.
triton`) turns any other launch into one launch event and leaves its outputs as they were:
right for kernels whose outputs only other kernels read (activations, logits, KV slots). The
V2 model runner keeps request state on the device (computed tokens, sequence lengths,
positions, the last sampled token, how many tokens a step sampled) and the host reads some of
it back: `num_sampled` decides whether a row emitted a token, so a chunked prefill's row must
say 0. The kernels that carry that state run here for real, in numpy on the host-backed
values (small control tensors and UVA views of host buffers, see revati.adapters.cuda), with
the kernel's own semantics; outputs that are meta-backed (too large to keep) are skipped.

A decode step's batches are small, and numpy's fixed cost per call (2-7 us in a serving
process, whose caches the model's Python keeps cold) then outweighs the work: below
ROW_LOOP_ROWS rows the four stand-ins of every step loop over rows in Python, one pass per row
as the kernel's programs do, and past it they run vectorized. Both forms are checked against
the kernels (tests/vllm/stand_in_check.py).

Each stand-in launches one MEMORY event with the bytes its kernel touches. The catch-all
would count every byte of every tensor passed, and these kernels are handed whole state
tables ([max_num_reqs, max_model_len] token ids) of which they touch a row's few entries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from revati.adapters.cuda.state import S
from revati.adapters.cuda.tensor import VirtualTensor, emit, host_array
from revati.predictors.launch import Family

_MEMORY = int(Family.MEMORY)
_V2 = "vllm.v1.worker.gpu"
ROW_LOOP_ROWS = 16  # up to this many rows, a per-row Python loop (see above)


def _values(t: Any) -> np.ndarray | None:
    """A writable numpy view of a tensor's values; None where no values are kept (a
    meta-backed virtual tensor, or no tensor)."""
    if type(t) is VirtualTensor:
        return host_array(t) if t._a.host is not None else None
    return None if t is None else t.numpy()


def _read(t: Any) -> np.ndarray:
    """The values the host would read back: for a small meta-backed tensor the token
    oracle's, kept in the tensor so that the later read agrees."""
    return host_array(t) if type(t) is VirtualTensor else t.numpy()


def _device(*tensors: Any) -> int:
    for t in tensors:
        if type(t) is VirtualTensor:
            return t._d
    return 0


def _stand_in(kernel: Callable[..., tuple[int, int, int]]) -> Callable[..., None]:
    """Run `kernel` (which returns its device, bytes touched and elements) inside a freeze,
    as Revati's own time, and launch its event on the current stream."""
    op = f"triton::{kernel.__name__}"

    @functools.wraps(kernel)
    def run(*args: Any, **kwargs: Any) -> None:
        link = S.link()
        with link.freeze():
            dev, nbytes, elements = kernel(*args, **kwargs)
            emit(link, dev, _MEMORY, op, "int32", (nbytes, elements))

    return run


def _lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Per-row lengths of the first `n` rows from cumulative offsets (query start locations,
    cumulative logits counts)."""
    return starts[1:n + 1] - starts[:n]


def _spread(lengths: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows of `lengths` elements (`total` in all) laid end to end: each element's row
    and its position within that row (what a kernel's program id and block offset give
    it)."""
    n = len(lengths)
    if total == n and (lengths == 1).all():  # a decode step: one token a row
        return np.arange(n), np.zeros(n, dtype=np.int64)
    row = np.repeat(np.arange(n), lengths)
    return row, np.arange(total) - (np.cumsum(lengths) - lengths)[row]


# -- V1: block_table.py
@_stand_in
def compute_slot_mapping(num_tokens: int, max_num_tokens: int, query_start_loc_ptr: Any,
                          positions_ptr: Any, block_table_ptr: Any, block_table_stride: int,
                          slot_mapping_ptr: Any, *_: Any, **__: Any) -> tuple[int, int, int]:
    # Reads each token's position and block id, writes its KV slot (int64). Nothing on the
    # host reads slot mappings back, and Revati's attention needs only the batch shape.
    return _device(slot_mapping_ptr), num_tokens * (8 + 4 + 8), num_tokens


# -- V2: input_batch.py
@_stand_in
def _prepare_prefill_inputs_kernel(input_ids_ptr: Any, next_prefill_tokens_ptr: Any,
                                   next_prefill_tokens_stride: int, num_lookahead: int,
                                   idx_mapping_ptr: Any, query_start_loc_ptr: Any,
                                   all_token_ids_ptr: Any, all_token_ids_stride: int,
                                   prefill_lens_ptr: Any, num_computed_tokens_ptr: Any,
                                   **_: Any) -> tuple[int, int, int]:
    """The prompt tokens of each prefilling row into the step's input ids, and the next
    `num_lookahead` prompt tokens (0 past the prompt) into `next_prefill_tokens`."""
    n = idx_mapping_ptr.shape[0]
    idx, qsl = _values(idx_mapping_ptr), _values(query_start_loc_ptr)
    pl, nc = _values(prefill_lens_ptr), _values(num_computed_tokens_ptr)
    ids, tokens = _values(input_ids_ptr), _values(all_token_ids_ptr)
    lookahead = _values(next_prefill_tokens_ptr)
    dev = _device(input_ids_ptr)
    if idx is None or qsl is None or pl is None or nc is None:
        return dev, n * 16, n
    moved = 0
    for b in np.flatnonzero(nc[idx[:n]] < pl[idx[:n]]):
        r, start, end = int(idx[b]), int(qsl[b]), int(qsl[b + 1])
        done, prefill = int(nc[r]), int(pl[r])
        moved += (end - start) * 8
        if ids is None or tokens is None:
            continue
        ids[start:end] = tokens[r, done:done + end - start]
        if lookahead is not None and num_lookahead:
            pos = done + end - start + np.arange(num_lookahead)
            ahead = np.zeros(num_lookahead, dtype=lookahead.dtype)
            inside = pos < prefill
            ahead[inside] = tokens[r, pos[inside]]
            lookahead.reshape(-1)[np.arange(num_lookahead) * next_prefill_tokens_stride
                                  + r] = ahead
    return dev, n * 16 + moved, n


@_stand_in
def _prepare_pos_seq_lens_kernel(pos_ptr: Any, seq_lens_ptr: Any, idx_mapping_ptr: Any,
                                 query_start_loc_ptr: Any, num_computed_tokens_ptr: Any,
                                 max_num_reqs: int, **_: Any) -> tuple[int, int, int]:
    """seq_len = computed + scheduled tokens per row (0 in the padding rows a full graph
    reads); positions computed .. seq_len - 1 for each row's tokens."""
    n = idx_mapping_ptr.shape[0]
    idx, qsl, nc = (_values(t) for t in (idx_mapping_ptr, query_start_loc_ptr,
                                          num_computed_tokens_ptr))
    seq_lens, pos = _values(seq_lens_ptr), _values(pos_ptr)
    dev = _device(seq_lens_ptr)
    if idx is None or qsl is None or nc is None:
        return dev, n * 16 + max_num_reqs * 4, max_num_reqs
    if n <= ROW_LOOP_ROWS:
        starts = qsl[:n + 1].tolist()
        for b, r in enumerate(idx[:n].tolist()):
            start, end, done = starts[b], starts[b + 1], int(nc[r])
            if seq_lens is not None:
                seq_lens[b] = done + end - start
            if pos is None or end == start:
                continue
            if end - start == 1:
                pos[start] = done
            else:
                pos[start:end] = np.arange(done, done + end - start)
        total = starts[n] - starts[0]
    else:
        done = nc[idx[:n]].astype(np.int64)
        q = _lengths(qsl, n)
        total = int(q.sum())
        if seq_lens is not None:
            seq_lens[:n] = done + q
        if pos is not None and total:
            row, offset = _spread(q, total)
            pos[qsl[0]:qsl[0] + total] = done[row] + offset
    if seq_lens is not None:
        seq_lens[n:max_num_reqs] = 0
    return dev, n * 16 + max_num_reqs * 4 + total * 8, max(total, max_num_reqs)


@_stand_in
def _combine_sampled_and_draft_tokens_kernel(
        input_ids_ptr: Any, idx_mapping_ptr: Any, last_sampled_tokens_ptr: Any,
        query_start_loc_ptr: Any, seq_lens_ptr: Any, prefill_len_ptr: Any,
        draft_tokens_ptr: Any, draft_tokens_stride: int, cu_num_logits_ptr: Any,
        logits_indices_ptr: Any, BLOCK_SIZE: int = 1, NUM_NEW_SAMPLED_TOKENS: int = 1,
        **_: Any) -> tuple[int, int, int]:
    """Each row's logits indices (its last `num_logits` tokens); for rows past their
    prefill, the last sampled token and the draft tokens into the step's input ids."""
    n = idx_mapping_ptr.shape[0]
    idx, qsl, cu = (_values(t) for t in (idx_mapping_ptr, query_start_loc_ptr,
                                          cu_num_logits_ptr))
    dev = _device(input_ids_ptr)
    if idx is None or qsl is None or cu is None:
        return dev, n * 32, n
    if n <= ROW_LOOP_ROWS:
        return dev, *_combine_rows(n, idx, qsl, cu, input_ids_ptr, last_sampled_tokens_ptr,
                                   seq_lens_ptr, prefill_len_ptr, draft_tokens_ptr,
                                   draft_tokens_stride, logits_indices_ptr,
                                   NUM_NEW_SAMPLED_TOKENS)
    idx = idx[:n]
    num_logits = _lengths(cu, n)
    query_end = qsl[1: n + 1].astype(np.int64)
    first = query_end - num_logits
    total = int(num_logits.sum())
    out = _values(logits_indices_ptr)
    if out is not None and total:
        row, offset = _spread(num_logits, total)
        out[cu[0]:cu[0] + total] = first[row] + offset
    ids, sl, pl = _values(input_ids_ptr), _values(seq_lens_ptr), _values(prefill_len_ptr)
    if ids is None or sl is None or pl is None:
        return dev, n * 32 + total * 8, n
    prefill = pl[idx].astype(np.int64)
    decoding = sl[:n] > prefill
    last = _values(last_sampled_tokens_ptr)
    if NUM_NEW_SAMPLED_TOKENS > 0 and last is not None:
        rows = np.flatnonzero(decoding & (sl[:n] - num_logits >= prefill))
        ids[first[rows]] = last.reshape(-1)[idx[rows]]
    drafts = _values(draft_tokens_ptr)
    num_drafts = num_logits - NUM_NEW_SAMPLED_TOKENS
    if drafts is not None:
        for b in np.flatnonzero(decoding & (num_drafts > 0)):
            k = int(num_drafts[b])
            ids[query_end[b] - k: query_end[b]] = drafts.reshape(-1)[
                idx[b] * draft_tokens_stride + np.arange(k)]
    return dev, n * 32 + total * 16, n


def _combine_rows(n: int, idx: np.ndarray, qsl: np.ndarray, cu: np.ndarray, input_ids: Any,
                  last_sampled: Any, seq_lens: Any, prefill_len: Any, draft_tokens: Any,
                  draft_stride: int, logits_indices: Any, new_sampled: int) -> tuple[int, int]:
    """_combine_sampled_and_draft_tokens_kernel one row at a time: (bytes, elements)."""
    ends, logit_starts = qsl[1:n + 1].tolist(), cu[:n + 1].tolist()
    total = logit_starts[n] - logit_starts[0]
    out = _values(logits_indices)
    if out is not None:
        for b in range(n):
            at, num = logit_starts[b], logit_starts[b + 1] - logit_starts[b]
            if num == 1:
                out[at] = ends[b] - 1
            elif num:
                out[at:at + num] = np.arange(ends[b] - num, ends[b])
    ids, sl, pl = _values(input_ids), _values(seq_lens), _values(prefill_len)
    if ids is None or sl is None or pl is None:
        return n * 32 + total * 8, n
    last, drafts = _values(last_sampled), _values(draft_tokens)
    for b, r in enumerate(idx[:n].tolist()):
        prefill, seq_len = int(pl[r]), int(sl[b])
        if seq_len <= prefill:
            continue
        num = logit_starts[b + 1] - logit_starts[b]
        end = ends[b]
        if new_sampled > 0 and last is not None and seq_len - num >= prefill:
            ids[end - num] = last.reshape(-1)[r]
        k = num - new_sampled
        if drafts is not None and k > 0:
            ids[end - k:end] = drafts.reshape(-1)[r * draft_stride:r * draft_stride + k]
    return n * 32 + total * 16, n


@_stand_in
def _get_num_sampled_and_rejected_kernel(num_sampled_ptr: Any, num_rejected_ptr: Any,
                                         seq_lens_ptr: Any, cu_num_logits_ptr: Any,
                                         idx_mapping_ptr: Any, prefill_len_ptr: Any,
                                         **_: Any) -> tuple[int, int, int]:
    """A row still in its (chunked) prefill samples nothing and rejects nothing; the others
    reject the logits they did not sample."""
    n = idx_mapping_ptr.shape[0]
    sampled, rejected = _values(num_sampled_ptr), _values(num_rejected_ptr)
    sl, cu, idx, pl = (_values(t) for t in (seq_lens_ptr, cu_num_logits_ptr, idx_mapping_ptr,
                                             prefill_len_ptr))
    dev = _device(num_sampled_ptr)
    if sampled is None or sl is None or cu is None or idx is None or pl is None:
        return dev, n * 24, n
    if n <= ROW_LOOP_ROWS:
        logit_starts = cu[:n + 1].tolist()
        for b, r in enumerate(idx[:n].tolist()):
            if sl[b] < pl[r]:
                sampled[b] = 0
                if rejected is not None:
                    rejected[b] = 0
            elif rejected is not None:
                rejected[b] = logit_starts[b + 1] - logit_starts[b] - int(sampled[b])
        return dev, n * 24, n
    prefilling = sl[:n] < pl[idx[:n]]
    sampled[:n][prefilling] = 0
    if rejected is not None:
        rejected[:n] = np.where(prefilling, 0, _lengths(cu, n) - sampled[:n])
    return dev, n * 24, n


@_stand_in
def _post_update_kernel(idx_mapping_ptr: Any, num_computed_tokens_ptr: Any,
                        last_sampled_tokens_ptr: Any, output_bin_counts_ptr: Any,
                        output_bin_counts_stride: int, sampled_tokens_ptr: Any,
                        sampled_tokens_stride: int, num_sampled_ptr: Any,
                        num_rejected_ptr: Any, query_start_loc_ptr: Any,
                        all_token_ids_ptr: Any, all_token_ids_stride: int, total_len_ptr: Any,
                        **_: Any) -> tuple[int, int, int]:
    """After sampling: each row's sampled tokens appended to its token ids (and output bin
    counts), its last sampled token and total length updated, and its computed tokens
    advanced by the scheduled tokens less the rejected drafts. Rows mapped to -1 are
    skipped. The sampled ids are the values the host will read back (the token oracle's)."""
    n = idx_mapping_ptr.shape[0]
    idx, ns = _values(idx_mapping_ptr), _values(num_sampled_ptr)
    dev = _device(num_computed_tokens_ptr)
    if idx is None or ns is None:
        return dev, n * 64, n
    if n <= ROW_LOOP_ROWS:
        return dev, _post_update_rows(
            n, idx, ns, num_computed_tokens_ptr, last_sampled_tokens_ptr,
            output_bin_counts_ptr, sampled_tokens_ptr, num_rejected_ptr,
            query_start_loc_ptr, all_token_ids_ptr, total_len_ptr), n
    live = idx[:n] >= 0
    if live.all():  # as in every step without a padded batch: no masks
        rows, req, count = np.arange(n), idx[:n].astype(np.int64), ns[:n].astype(np.int64)
    else:
        rows = np.flatnonzero(live)
        req, count = idx[:n][rows].astype(np.int64), ns[:n][rows].astype(np.int64)
    total_len = _values(total_len_ptr)
    written = int(count.sum())
    if written:
        sampled = _read(sampled_tokens_ptr)
        sampled = sampled.reshape(sampled.shape[0], -1)
        base = total_len[req].astype(np.int64) if total_len is not None else None
        tokens, counts = _values(all_token_ids_ptr), _values(output_bin_counts_ptr)
        for j in range(int(count.max())):
            m = count > j
            ids = sampled[rows[m], j]
            if tokens is not None and base is not None:
                tokens[req[m], base[m] + j] = ids
            if counts is not None:
                np.add.at(counts, (req[m], ids), 1)
        some = count > 0
        last = _values(last_sampled_tokens_ptr)
        if last is not None:
            last.reshape(-1)[req[some]] = sampled[rows[some], count[some] - 1]
        if total_len is not None:
            total_len[req] += count
    computed = _values(num_computed_tokens_ptr)
    if computed is not None:
        qsl = _values(query_start_loc_ptr)
        q = _lengths(qsl, n)[rows] if qsl is not None else 0
        rejected = _values(num_rejected_ptr)
        computed[req] += q - (rejected[:n][rows] if rejected is not None else 0)
    return dev, n * 64 + written * 8, n


def _post_update_rows(n: int, idx: np.ndarray, ns: np.ndarray, num_computed_tokens: Any,
                      last_sampled: Any, output_bin_counts: Any, sampled_tokens: Any,
                      num_rejected: Any, query_start_loc: Any, all_token_ids: Any,
                      total_len: Any) -> int:
    """_post_update_kernel one row at a time: the bytes it touches."""
    rows = [(b, r, int(ns[b])) for b, r in enumerate(idx[:n].tolist()) if r >= 0]
    written = sum(count for _, _, count in rows)
    if written:
        sampled = _read(sampled_tokens)
        sampled = sampled.reshape(sampled.shape[0], -1)
        lengths, tokens = _values(total_len), _values(all_token_ids)
        counts, last = _values(output_bin_counts), _values(last_sampled)
        for b, r, count in rows:
            if not count:
                continue
            ids = sampled[b, :count].tolist()
            if lengths is not None:
                base = int(lengths[r])
                if tokens is not None:
                    tokens[r, base:base + count] = ids
                lengths[r] = base + count
            if counts is not None:
                for token in ids:
                    counts[r, token] += 1
            if last is not None:
                last.reshape(-1)[r] = ids[-1]
    computed = _values(num_computed_tokens)
    if computed is not None:
        qsl, rejected = _values(query_start_loc), _values(num_rejected)
        for b, r, _ in rows:
            q = int(qsl[b + 1] - qsl[b]) if qsl is not None else 0
            computed[r] += q - (int(rejected[b]) if rejected is not None else 0)
    return n * 64 + written * 8


@_stand_in
def _post_update_num_computed_tokens_kernel(idx_mapping_ptr: Any,
                                            num_computed_tokens_ptr: Any,
                                            query_start_loc_ptr: Any,
                                            **_: Any) -> tuple[int, int, int]:
    n = idx_mapping_ptr.shape[0]
    idx, computed, qsl = (_values(t) for t in (idx_mapping_ptr, num_computed_tokens_ptr,
                                                query_start_loc_ptr))
    if idx is not None and computed is not None and qsl is not None:
        computed[idx[:n]] += _lengths(qsl, n)
    return _device(num_computed_tokens_ptr), n * 24, n


@_stand_in
def _expand_idx_mapping_kernel(idx_mapping_ptr: Any, expanded_idx_mapping_ptr: Any,
                               expanded_local_pos_ptr: Any, cu_num_logits_ptr: Any,
                               **_: Any) -> tuple[int, int, int]:
    """Each row's state index and local position repeated over its logits (drafts)."""
    n = idx_mapping_ptr.shape[0]
    idx, cu = _values(idx_mapping_ptr), _values(cu_num_logits_ptr)
    expanded, local = _values(expanded_idx_mapping_ptr), _values(expanded_local_pos_ptr)
    dev = _device(idx_mapping_ptr)
    if idx is None or cu is None:
        return dev, n * 16, n
    per_row = _lengths(cu, n)
    total = int(per_row.sum())
    row, offset = _spread(per_row, total)
    if expanded is not None:
        expanded[cu[0]:cu[0] + total] = idx[row]
    if local is not None:
        local[cu[0]:cu[0] + total] = offset
    return dev, n * 16 + total * 12, max(total, 1)


# -- V2: buffer_utils.py, block_table.py
@_stand_in
def _apply_write_kernel(output_ptr: Any, output_stride: Any, write_indices_ptr: Any,
                        write_starts_ptr: Any, write_contents_ptr: Any, write_cu_lens_ptr: Any,
                        write_group_ids_ptr: Any, BLOCK_SIZE: int = 1024,
                        MULTI_GROUP: bool = False, **_: Any) -> tuple[int, int, int]:
    """Staged host writes into device state: write p puts its contents at row
    `indices[p]`, column `starts[p]`. With several groups the targets are raw device
    pointers (the block tables, whose values Revati's attention does not read): those
    writes only launch."""
    n = write_indices_ptr.shape[0]
    cu = _values(write_cu_lens_ptr)
    nbytes = int(cu[n - 1]) * 8 if cu is not None and n else 0
    dev = _device(write_contents_ptr, write_indices_ptr)
    out = None if MULTI_GROUP else _values(output_ptr)
    rows, starts, contents = (_values(t) for t in (write_indices_ptr, write_starts_ptr,
                                                    write_contents_ptr))
    if out is None or cu is None or rows is None or starts is None or contents is None:
        return dev, nbytes + n * 12, max(n, 1)
    if not output_ptr.is_contiguous():
        raise NotImplementedError("revati: staged writes into a strided device tensor")
    flat = out.reshape(-1)
    begin = 0
    for p in range(n):
        end = int(cu[p])
        at = int(rows[p]) * int(output_stride) + int(starts[p])
        flat[at:at + end - begin] = contents[begin:end]
        begin = end
    return dev, nbytes + n * 12, max(nbytes // 8, 1)


@_stand_in
def _gather_block_tables_kernel(batch_idx_to_req_idx: Any, src_block_table_ptrs: Any,
                                dst_block_table_ptrs: Any, block_table_strides: Any,
                                num_blocks_ptr: Any, num_blocks_stride: int, num_reqs: int,
                                **_: Any) -> tuple[int, int, int]:
    """Each row's block ids copied into the step's block table (launch only: see above)."""
    idx, blocks = _values(batch_idx_to_req_idx), _values(num_blocks_ptr)
    dev = _device(batch_idx_to_req_idx)
    if idx is None or blocks is None:
        return dev, num_reqs * 16, max(num_reqs, 1)
    moved = int(blocks.reshape(-1, num_blocks_stride)[:, idx[:num_reqs]].sum())
    return dev, num_reqs * 16 + moved * 8, max(moved, 1)


@_stand_in
def _compute_slot_mappings_kernel(max_num_tokens: int, idx_mapping: Any,
                                  query_start_loc: Any, pos: Any, *_: Any,
                                  **__: Any) -> tuple[int, int, int]:
    """Each token's KV slot from its position and block id, the rest of the (graph-sized)
    mapping padded (launch only: Revati's attention reads the batch from CPU metadata)."""
    n = idx_mapping.shape[0]
    qsl = _values(query_start_loc)
    tokens = int(qsl[n]) if qsl is not None else max_num_tokens
    return _device(idx_mapping), tokens * (8 + 4 + 8) + (max_num_tokens - tokens) * 8, \
        max_num_tokens


STAND_INS: dict[str, Callable[..., None]] = {
    "vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel": compute_slot_mapping,
    **{f"{_V2}.input_batch.{k.__name__}": k for k in (
        _prepare_prefill_inputs_kernel, _prepare_pos_seq_lens_kernel,
        _combine_sampled_and_draft_tokens_kernel, _get_num_sampled_and_rejected_kernel,
        _post_update_kernel, _post_update_num_computed_tokens_kernel,
        _expand_idx_mapping_kernel)},
    f"{_V2}.buffer_utils._apply_write_kernel": _apply_write_kernel,
    f"{_V2}.block_table._gather_block_tables_kernel": _gather_block_tables_kernel,
    f"{_V2}.block_table._compute_slot_mappings_kernel": _compute_slot_mappings_kernel,
}


def register() -> None:
    from vllm.triton_utils.dispatcher import register_kernels

    register_kernels(STAND_INS)
