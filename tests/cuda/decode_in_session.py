"""Run under `revatictl run`: the 2-layer Llama-3.1-8B-shaped decoder on cuda:0 of the
session's virtual GPU, a prefill and 16 decode steps. Prints the virtual ns from the first
kernel's launch to the end of the last sync."""

from __future__ import annotations

import json
import time

import torch

from tests.cuda.llama import Llama, two_layer

PROMPT = 16


def main() -> None:
    cfg = two_layer()
    with torch.device("cuda"):
        model = Llama(cfg).to(torch.bfloat16)
    cache = model.kv_cache(1, 64)
    torch.cuda.synchronize()
    t0 = time.monotonic_ns()
    tokens = torch.tensor([list(range(1, PROMPT + 1))], device="cuda")
    logits = model(tokens, torch.arange(PROMPT, device="cuda"), cache, 0)
    for step in range(16):
        next_token = logits.argmax(-1)
        next_token.tolist()
        start = PROMPT + step
        logits = model(next_token, torch.tensor([start], device="cuda"), cache, start)
    torch.cuda.synchronize()
    print(json.dumps({"t0_ns": t0, "elapsed_ns": time.monotonic_ns() - t0}))


if __name__ == "__main__":
    main()
