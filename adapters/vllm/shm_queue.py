"""vLLM's shared-memory MessageQueue, woken through the session page.

The engine core and the workers of a TP/PP > 1 deployment talk through `MessageQueue`s
(vllm/distributed/device_communicators/shm_broadcast.py): the writer fills a shared-memory
chunk and sets its written flag, then notifies over a zmq PUB socket; a reader that finds no
chunk spins (`SpinCondition.wait`: sched_yield) for `busy_loop_s` after its last read, then
parks in a zmq poll for the notification. Under Revati a spinning reader counts as running, so
the clock cannot jump while anybody spins (TP=2 took 64 jumps for a whole demo), and a parked
reader waits for a message that travels through zmq's I/O threads, which Revati does not see:
the clock may jump over it (one run in seven stalled ~5 s to vLLM's lost-notify timeout).

Here a reader parks at once, on its own slot's wake word of the session page, the way every
hooked wait of Revati sleeps, and the writer pokes the slot of each reader of the queue after
its chunk is written: a futex wake-up, which the kernel makes runnable at once, as a notified
thread is. Readers find each other through a small file beside the session page, one byte per
slot, keyed by the queue's notify address. The race between a reader's check and its sleep is
closed by the word's value: a reader sleeps only while its word still has the value it had
before its last check of the chunk flags, and every poke after a write changes it. zmq's
notification is still sent (readers outside the session, shutdown).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Any

from revati.adapters.clock.runtime import NO_DEADLINE

SLOTS = 256  # the session page's slots (_vclock.c MAX_SLOTS)
MODULE = "vllm.distributed.device_communicators.shm_broadcast"


def install(shm_broadcast: Any) -> None:
    """Patch the SpinCondition of vLLM's `shm_broadcast` module (MODULE) in this process of a
    session (idempotent)."""
    cls = shm_broadcast.SpinCondition
    if getattr(cls, "_revati", False):
        return
    init, notify, cancel = cls.__init__, cls.notify, cls.cancel

    def __init__(self: Any, is_reader: bool, context: Any, notify_address: str,
                 *args: Any, **kwargs: Any) -> None:
        init(self, is_reader, context, notify_address, *args, **kwargs)
        self._revati_clock = clock = _clock()
        self._revati_readers = _readers_file(clock.page_path, notify_address)
        self._revati_seen = None
        if is_reader:
            self._revati_readers[clock.slot] = 1

    def wait(self: Any, timeout_ms: int | None = None) -> None:
        clock = self._revati_clock
        page = clock.page
        word = page.wake_word()
        if self._revati_seen != word:
            # a poke (or a clock change) since the caller last looked: let it check again;
            # a write before this read of the word is visible to that check
            self._revati_seen = word
            return
        deadline = NO_DEADLINE if timeout_ms is None else clock.now_ns() + timeout_ms * 10**6
        token = clock.wait_begin(deadline)
        try:
            page.wait_until(deadline, -1, word)
        finally:
            clock.wait_end(token)
        self._revati_seen = None  # woken: the caller checks, then the word is read again

    def notify_readers(self: Any) -> None:
        notify(self)
        page = self._revati_clock.page
        readers = self._revati_readers
        slot = readers.find(b"\x01")
        while slot >= 0:
            page.poke(slot)
            slot = readers.find(b"\x01", slot + 1)

    def cancel_wait(self: Any) -> None:
        cancel(self)
        if self.is_reader:
            self._revati_clock.page.poke()  # the reader sleeps on this process's slot word

    cls.__init__ = __init__
    cls.wait = wait
    cls.notify = notify_readers
    cls.cancel = cancel_wait
    cls._revati = True


def _clock() -> Any:
    from revati.adapters import session

    member = session.member()
    assert member is not None, "revati: the shm queue hooks need a session"
    return member.clock


def _readers_file(page_path: str, notify_address: str) -> mmap.mmap:
    """One byte per session slot, set by the queue's readers: `<session page>.mq-<key>`,
    created by whichever side comes first and removed with the page (revatid)."""
    key = hashlib.sha256(notify_address.encode()).hexdigest()[:16]
    path = f"{page_path}.mq-{key}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < SLOTS:
            os.ftruncate(fd, SLOTS)
        return mmap.mmap(fd, SLOTS)
    finally:
        os.close(fd)
