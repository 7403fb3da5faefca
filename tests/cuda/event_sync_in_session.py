"""Run under `revatictl run --fixed-ns 1000000`: a kernel, an event recorded after it, host
work, then a sync on the event. Prints (JSON) the requests the link sent, the event's time and
when the sync returned."""

from __future__ import annotations

import json

import torch

from revati.adapters import cuda
from revati.adapters.cuda.state import S
from revati.adapters.session import member
from revati.predictors.launch import Family


def main() -> None:
    client = member().client
    sent: list[str] = []
    send = client.send
    client.send = lambda kind, **fields: sent.append(kind) or send(kind, **fields)
    torch.cuda.synchronize()
    cuda.launch(Family.GEMM, "mm", "bf16", (1, 4096, 4096, 1))
    done = torch.cuda.Event()
    done.record()
    before = S.link().now_ns()
    done.synchronize()
    synced = S.link().now_ns()
    print(json.dumps({"sent": sent, "recorded_at": before, "synced": synced,
                      "event_ns": S.link().event_time_ns(done.id), "query": done.query()}))


if __name__ == "__main__":
    main()
