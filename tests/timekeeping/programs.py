"""Small programs that the virtual-time tests run as session participants.

    python programs.py NAME ARGS...   prints one JSON line
"""

from __future__ import annotations

import json
import os
import select
import sys
import time


def monotonic_reads(rounds: str) -> dict:
    """Reads across many jumps; reports whether any read went backwards."""
    last, backwards, reads = -1.0, 0, 0
    for i in range(int(rounds)):
        time.sleep(0.05 * (1 + i % 3))
        for _ in range(200):
            now = time.monotonic()
            backwards += now < last
            last = now
            reads += 1
    return {"backwards": backwards, "reads": reads}


def ping_pong(rounds: str) -> dict:
    """Parent and child exchange virtual timestamps over pipes, sleeping between turns."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    me_r, me_w = (b_r, a_w) if pid == 0 else (a_r, b_w)
    violations, exchanges = 0, 0
    if pid != 0:
        os.write(me_w, b"%.9f\n" % time.time())
    for _ in range(int(rounds)):
        line = b""
        while not line.endswith(b"\n"):
            line += os.read(me_r, 1)
        received = time.time()
        violations += received < float(line)
        exchanges += 1
        time.sleep(0.01)
        os.write(me_w, b"%.9f\n" % time.time())
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return {"violations": violations, "exchanges": exchanges}


def sleeper(seconds: str) -> dict:
    t0 = time.monotonic()
    time.sleep(float(seconds))
    return {"asked": float(seconds), "slept": time.monotonic() - t0, "woke_at": time.monotonic()}


def datetimes(seconds: str) -> dict:
    """datetime's clock is the session's: now() before and after a sleep; its values and its
    classes pickle (torchrun's rendezvous pickles a datetime)."""
    import datetime
    import pickle

    before = datetime.datetime.now()
    time.sleep(float(seconds))
    after, today = datetime.datetime.now(), datetime.date.today()
    back = pickle.loads(pickle.dumps((after, today, datetime.datetime, datetime.date)))
    return {"slept": (after - before).total_seconds(),
            "pickled": back == (after, today, datetime.datetime, datetime.date),
            "class": type(back[0]) is datetime.datetime}


def cancelled_timer(seconds: str) -> dict:
    """A wake-up at 10 ms fires, one at 20 ms is cancelled while not first in line, then the
    program sleeps: the cancelled deadline must not hold the session (it once left the
    timekeeper jumping to it forever)."""
    from revati.adapters import session

    clock = session.member().clock
    t0 = clock.now_ns()
    fired = []
    clock.call_at(t0 + 10_000_000, lambda: fired.append(clock.now_ns() - t0))
    late = clock.call_at(t0 + 20_000_000, lambda: fired.append(-1))
    clock.cancel(late)
    time.sleep(float(seconds))
    return {"fired": fired, "virtual_s": (clock.now_ns() - t0) / 1e9}


def freeze_burn(ms: str) -> dict:
    """Burn CPU inside a freeze; the session clock must not move."""
    from revati.adapters.clock import _vclock
    from revati.adapters.session import member

    clock = member().clock
    t0 = time.monotonic()
    with clock.freeze():
        r0 = _vclock.real_monotonic_ns()
        while _vclock.real_monotonic_ns() - r0 < float(ms) * 1e6:
            pass
    return {"virtual_ms": (time.monotonic() - t0) * 1e3}


def spin_real(ms: str) -> dict:
    """Busy for `ms` of real time (no hooked wait): the clock must flow at real rate."""
    from revati.adapters.clock import _vclock

    t0 = time.monotonic()
    r0 = _vclock.real_monotonic_ns()
    while _vclock.real_monotonic_ns() - r0 < float(ms) * 1e6:
        pass
    return {"virtual_ms": (time.monotonic() - t0) * 1e3,
            "real_ms": (_vclock.real_monotonic_ns() - r0) / 1e6}


def outsider_child(ms: str) -> dict:
    """A non-Python child computes for `ms` of real time (a spinning shell under `timeout`, as
    a compiler under a build tool) while the parent waits for it and a thread sleeps for 100 s:
    the child's work is program time, so the clock must flow through it, not jump 100 s."""
    import subprocess
    import threading

    from revati.adapters.clock import _vclock

    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
    t0 = time.monotonic()
    r0 = _vclock.real_monotonic_ns()
    subprocess.run(["timeout", str(float(ms) / 1e3), "sh", "-c", "while :; do :; done"])
    return {"virtual_ms": (time.monotonic() - t0) * 1e3,
            "real_ms": (_vclock.real_monotonic_ns() - r0) / 1e6}


def outsider_from_c(ms: str) -> dict:
    """As outsider_child, but the child is started by C code (os.system), so nobody announces
    it, and the parent waits in C (waitpid): /proc sees the parent asleep."""
    import threading

    from revati.adapters.clock import _vclock

    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
    t0 = time.monotonic()
    r0 = _vclock.real_monotonic_ns()
    os.system(f"timeout {float(ms) / 1e3} sh -c 'while :; do :; done'")
    return {"virtual_ms": (time.monotonic() - t0) * 1e3,
            "real_ms": (_vclock.real_monotonic_ns() - r0) / 1e6}


def idle_outsider(seconds: str) -> dict:
    """A non-Python child that only sleeps (a helper daemon) beside a sleep of `seconds`: the
    clock still jumps."""
    import subprocess

    helper = subprocess.Popen(["sleep", "600"])
    t0 = time.monotonic()
    time.sleep(float(seconds))
    slept = time.monotonic() - t0
    helper.kill()
    helper.wait()
    return {"slept": slept}


def unhooked_wait(seconds: str) -> dict:
    """Blocks in select.select (C, not hooked) while a child sleeps in virtual time."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        time.sleep(float(seconds))
        os.write(w, b"x")
        os._exit(0)
    t0 = time.monotonic()
    select.select([r], [], [])
    os.waitpid(pid, 0)
    return {"virtual_s": time.monotonic() - t0}


def timed_selects(rounds: str) -> dict:
    """Selector waits with timeouts: some time out, some are woken by a thread that writes
    after a virtual sleep. Each must end at its own virtual time, with no real-time polling."""
    import selectors
    import threading

    r, w = os.pipe()
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
    timed_out, woken = [], []
    for i in range(int(rounds)):
        t0 = time.monotonic()
        if i % 2:
            threading.Thread(target=lambda: (time.sleep(0.05), os.write(w, b"x"))).start()
            events = sel.select(1.0)
            os.read(r, 1)
            woken.append((len(events), time.monotonic() - t0))
        else:
            timed_out.append((len(sel.select(0.2)), time.monotonic() - t0))
    return {"timed_out": timed_out, "woken": woken}


def select_while_busy(ms: str) -> dict:
    """A selector times out while another thread computes (time flows at real rate): the
    waiting thread must sleep through, not poll (its voluntary context switches)."""
    import selectors
    import threading

    from revati.adapters.clock import _vclock

    def switches() -> int:
        with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
            return next(int(line.split()[1]) for line in f
                        if line.startswith("voluntary_ctxt_switches"))

    def spin() -> None:
        r0 = _vclock.real_monotonic_ns()
        while _vclock.real_monotonic_ns() - r0 < float(ms) * 1.2e6:
            pass

    busy = threading.Thread(target=spin)
    busy.start()
    r, _w = os.pipe()
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
    before, t0 = switches(), time.monotonic()
    events = sel.select(float(ms) / 1e3)
    waited, after = time.monotonic() - t0, switches()
    busy.join()
    return {"events": len(events), "waited": waited, "switches": after - before}


def idle_pool(seconds: str) -> dict:
    """A ThreadPoolExecutor's idle workers block in queue.SimpleQueue.get (C) while the main
    thread sleeps: they wait, they do not run."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        pool.submit(time.sleep, 0.01).result()
        t0 = time.monotonic()
        time.sleep(float(seconds))
        slept = time.monotonic() - t0
        timed = pool.submit(lambda: time.monotonic()).result()
    return {"slept": slept, "task_ran_at": timed - t0}


def with_resource_tracker(rounds: str) -> dict:
    """Short sleeps while multiprocessing's resource tracker runs beside the program (as it
    does beside vLLM and SGLang): a helper process blocked in a pipe read Revati does not
    hook, for the whole run. A tracked semaphore shows it still does its job."""
    import multiprocessing
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    lock = multiprocessing.get_context("spawn").Lock()  # registered with the tracker
    t0 = time.monotonic()
    for _ in range(int(rounds)):
        time.sleep(0.05)
    del lock
    return {"slept": time.monotonic() - t0, "tracker_pid": resource_tracker._resource_tracker._pid}


def zmq_receivers(seconds: str) -> dict:
    """A thread blocks in recv_pyobj (as SGLang's detokenizer does for its whole run) while the
    main thread sleeps, then gets a message; a socket with RCVTIMEO times out in virtual time."""
    import threading

    import zmq

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    got: list = []
    receiver = threading.Thread(target=lambda: got.append((pull.recv_pyobj(), time.monotonic())))
    receiver.start()
    t0 = time.monotonic()
    time.sleep(float(seconds))
    push.send_pyobj("hello")
    receiver.join()
    pull.rcvtimeo = 250  # ms
    t1 = time.monotonic()
    try:
        pull.recv()
        timed_out = None
    except zmq.Again:
        timed_out = time.monotonic() - t1
    ctx.destroy(linger=0)
    return {"message": got[0][0], "received_at": got[0][1] - t0, "timed_out": timed_out}


def uvloop_streaming(rounds: str) -> dict:
    """An HTTP-like streaming server under uvloop, as vLLM's API server runs: it listens on a
    socket of its own made with proto 0, and answers each request on one kept-alive connection
    with a header chunk at once, then token chunks 5 virtual ms apart. The client reports how
    long after its header each response's first token chunk arrived."""
    import asyncio
    import socket

    import uvloop

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as vLLM's
    listener.bind(("127.0.0.1", 0))
    nodelay: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        while await reader.readline():
            writer.write(b"header\n")
            for token in range(3):
                await asyncio.sleep(0.005)
                writer.write(b"token %d\n" % token)
        writer.close()

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(serve, sock=listener)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        first_token_after_header = []
        for _ in range(int(rounds)):
            writer.write(b"request\n")
            await reader.readline()
            header_at = time.monotonic()
            await reader.readline()
            first_token_after_header.append(time.monotonic() - header_at)
            for _ in range(2):
                await reader.readline()
            await asyncio.sleep(0.05)
        writer.close()
        server.close()
        return {"loop": type(loop) is uvloop.Loop, "nodelay": nodelay,
                "first_token_after_header": first_token_after_header}

    return uvloop.run(main(), debug=False)


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])), flush=True)
