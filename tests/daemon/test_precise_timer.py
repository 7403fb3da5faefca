"""The timekeeper's timer: sub-millisecond delays are kept (the loop's own timers round them to
whole milliseconds under uvloop), a re-arm replaces the pending call, a cancel drops it."""

import asyncio
import time

import pytest
import uvloop

from revati.revatid.precise_timer import SPIN_BELOW_S, PreciseTimer


async def _elapsed(timer: PreciseTimer, delay: float) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    start = time.monotonic()
    timer.arm(delay, lambda: done.set_result(time.monotonic() - start))
    return await asyncio.wait_for(done, 1.0)


@pytest.mark.parametrize("delay", [SPIN_BELOW_S / 3, 3 * SPIN_BELOW_S, 0.0015])
def test_a_call_runs_after_its_delay_and_not_a_millisecond_late(delay: float) -> None:
    async def main() -> list[float]:
        timer = PreciseTimer(asyncio.get_running_loop())
        try:
            return [await _elapsed(timer, delay) for _ in range(20)]
        finally:
            timer.close()

    took = sorted(uvloop.run(main()))
    assert took[0] >= delay
    assert took[len(took) // 2] < delay + 0.0005  # call_later(delay) would be 0 or +1 ms


@pytest.mark.parametrize("first,second", [(0.002, SPIN_BELOW_S / 3), (SPIN_BELOW_S / 3, 0.002)])
def test_a_re_arm_replaces_the_pending_call(first: float, second: float) -> None:
    calls: list[str] = []

    async def main() -> None:
        timer = PreciseTimer(asyncio.get_running_loop())
        timer.arm(first, calls.append, "first")
        timer.arm(second, calls.append, "second")
        assert timer.armed
        await asyncio.sleep(0.01)
        assert not timer.armed
        timer.close()

    uvloop.run(main())
    assert calls == ["second"]


@pytest.mark.parametrize("delay", [SPIN_BELOW_S / 3, 0.001])
def test_a_cancelled_call_never_runs(delay: float) -> None:
    calls: list[int] = []

    async def main() -> None:
        timer = PreciseTimer(asyncio.get_running_loop())
        timer.arm(delay, calls.append, 1)
        timer.cancel()
        await asyncio.sleep(0.01)
        timer.close()

    uvloop.run(main())
    assert calls == []
