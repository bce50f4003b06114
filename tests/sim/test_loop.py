"""The virtual-time loop: asyncio primitives jump instead of waiting."""

from __future__ import annotations

import asyncio
import textwrap
import time

import pytest

from wgrelay.sim import EPOCH_S, LinkSpec, Simulation, SimulationDeadlock, SimulationError
from wgrelay.transport.base import Addr


def test_sleep_jumps_exactly(sim: Simulation) -> None:
    async def scenario() -> list[float]:
        seen = []
        for delay in (5.0, 0.25, 119.75):
            await asyncio.sleep(delay)
            seen.append(sim.now())
        return seen

    assert sim.run(scenario()) == [5.0, 5.25, 125.0]
    assert sim.wall() == EPOCH_S + 125.0


def test_timeout_fires_at_its_deadline(sim: Simulation) -> None:
    async def scenario() -> float:
        try:
            async with asyncio.timeout(3.0):
                await asyncio.sleep(100.0)
        except TimeoutError:
            return sim.now()
        raise AssertionError("the timeout did not fire")

    assert sim.run(scenario()) == 3.0


def test_call_at_runs_in_deadline_order_at_exact_times(sim: Simulation) -> None:
    fired: list[tuple[str, float]] = []
    loop = sim.loop

    def fire(name: str) -> None:
        fired.append((name, loop.time()))

    for name, when in (("c", 7.5), ("a", 1.0), ("b", 2.5)):
        loop.call_at(when, fire, name)
    sim.run_for(10.0)
    assert fired == [("a", 1.0), ("b", 2.5), ("c", 7.5)]
    assert sim.now() == 10.0


def test_tasks_and_futures_interleave_in_virtual_time(sim: Simulation) -> None:
    order: list[str] = []

    async def worker(name: str, period: float, rounds: int) -> None:
        for i in range(rounds):
            await asyncio.sleep(period)
            order.append(f"{name}{i}@{sim.now()}")

    async def scenario() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(worker("x", 2.0, 3))
            tg.create_task(worker("y", 3.5, 2))

    sim.run(scenario())
    assert order == ["x0@2.0", "y0@3.5", "x1@4.0", "x2@6.0", "y1@7.0"]


def test_an_hour_of_virtual_time_takes_almost_no_wall_time(sim: Simulation) -> None:
    async def once_a_second() -> int:
        ticks = 0
        while sim.now() < 3600.0:
            await asyncio.sleep(1.0)
            ticks += 1
        return ticks

    started = time.perf_counter()
    assert sim.run(once_a_second()) == 3600
    elapsed = time.perf_counter() - started
    assert sim.now() == 3600.0
    # An order of magnitude of slack over what it takes (~30 ms): the point is
    # "not an hour", not a benchmark.
    assert elapsed < 5.0


def test_deadlock_raises_instead_of_hanging(sim: Simulation) -> None:
    async def stuck() -> None:
        await sim.loop.create_future()  # nobody will ever complete it

    with pytest.raises(SimulationDeadlock, match="stuck"):
        sim.run(sim.spawn(stuck(), name="stuck"))


def test_to_thread_runs_inline_and_deterministically(sim: Simulation) -> None:
    calls: list[float] = []

    def blocking_call(x: int) -> int:
        calls.append(sim.now())
        return x * 2

    async def scenario() -> int:
        await asyncio.sleep(4.0)
        return await asyncio.to_thread(blocking_call, 21)

    assert sim.run(scenario()) == 42
    assert calls == [4.0]


def test_executor_can_be_forbidden() -> None:
    with Simulation(seed=1, inline_executor=False) as sim:

        async def scenario() -> None:
            await asyncio.to_thread(print)

        with pytest.raises(SimulationError, match="threads are not allowed"):
            sim.run(scenario())


def test_same_program_same_order() -> None:
    def run(seed: int) -> list[tuple[int, float]]:
        with Simulation(seed=seed) as sim:
            order: list[tuple[int, float]] = []

            async def job(i: int) -> None:
                for _ in range(5):
                    await asyncio.sleep(sim.rng.choice((0.5, 1.0, 1.5)))
                    order.append((i, sim.now()))

            async def scenario() -> None:
                async with asyncio.TaskGroup() as tg:
                    for i in range(10):
                        tg.create_task(job(i))

            sim.run(scenario())
            return order

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_runtime_clocks_and_blocking_calls(sim: Simulation) -> None:
    rt = sim.add_host("h").runtime()
    sim.run_for(12.5)
    assert rt.loop is sim.loop
    assert rt.now() == 12.5
    assert rt.wall() == EPOCH_S + 12.5
    assert sim.run(rt.run_blocking(lambda: (sim.now(), "done"))) == (12.5, "done")


def test_closed_simulation_refuses_to_run() -> None:
    sim = Simulation(seed=1)
    sim.spawn(asyncio.sleep(10.0))  # cancelled by close()
    sim.close()
    sim.close()  # idempotent
    assert sim.loop.is_closed()
    with pytest.raises(SimulationError, match="closed"):
        sim.run_for(1.0)


def test_run_until_returns_when_the_condition_first_holds(sim: Simulation) -> None:
    flag: list[bool] = []
    sim.loop.call_at(2.0, flag.append, True)
    assert sim.run_until(lambda: bool(flag), timeout_s=10.0, poll_s=0.5) == 2.0
    with pytest.raises(TimeoutError):
        sim.run_until(lambda: False, timeout_s=3.0)
    assert sim.now() == 5.0


def test_packets_due_with_a_timer_run_before_it(sim: Simulation) -> None:
    a = sim.add_host("a", link=LinkSpec(delay_s=0.5))
    b = sim.add_host("b", link=LinkSpec(delay_s=0.5))
    order: list[str] = []

    class Note:
        def datagram_received(self, data: bytes, addr: Addr) -> None:
            order.append(f"packet@{sim.now()}")

        def batch_done(self) -> None:
            order.append("batch_done")

    b.runtime().open_udp("0.0.0.0", 9, Note())
    a.runtime().open_udp("0.0.0.0", 0, Note()).sendto(b"x", (b.address, 9))
    sim.loop.call_at(1.0, lambda: order.append(f"timer@{sim.now()}"))
    sim.run_for(2.0)
    assert order == ["packet@1.0", "batch_done", "timer@1.0"]


def test_the_package_docstring_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import wgrelay.sim

    assert wgrelay.sim.__doc__ is not None
    example = wgrelay.sim.__doc__.split("::\n\n", 1)[1].split("\n\nModules:")[0]
    exec(textwrap.dedent(example), {})  # noqa: S102 (our own docstring)
    assert "tunnel up at t=" in capsys.readouterr().out
