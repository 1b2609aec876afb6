"""The cycle gate as logic (``cerssd.replication.relationships.cycle_gate``): the cap, FIFO turns,
cancellation while waiting or just let in, and a limit changed while cycles wait.
Through a real daemon: tests/test_relationships_spread.py."""

from __future__ import annotations

import asyncio

import pytest

from cerssd.replication.relationships.cycle_gate import CycleGate


async def settle() -> None:
    """Let every ready task run until none is (the gate's hand-offs are immediate)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Cycles:
    """Tasks that each hold a turn until the test lets them finish."""

    def __init__(self, gate: CycleGate) -> None:
        self.gate = gate
        self.inside: list[str] = []
        self.order: list[str] = []
        self.most = 0
        self.queued: dict[str, list[bool]] = {}
        self.finish: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str) -> None:
        self.finish[name] = asyncio.Event()
        self.queued[name] = []
        self.tasks[name] = asyncio.get_running_loop().create_task(self._run(name))

    async def _run(self, name: str) -> None:
        async with self.gate.turn(self.queued[name].append):
            self.inside.append(name)
            self.order.append(name)
            self.most = max(self.most, len(self.inside))
            try:
                await self.finish[name].wait()
            finally:
                self.inside.remove(name)


async def test_at_most_the_limit_run_and_the_rest_go_in_arrival_order() -> None:
    gate = CycleGate(2)
    c = Cycles(gate)
    for name in "abcdef":
        c.start(name)
    await settle()
    assert c.inside == ["a", "b"] and (gate.running, gate.waiting) == (2, 4)
    assert c.queued["a"] == [] and c.queued["c"] == [True]  # only a queued one is told
    for name in "abcdef":
        c.finish[name].set()
        await settle()
        assert len(c.inside) <= 2
    await asyncio.gather(*c.tasks.values())
    assert c.order == list("abcdef") and c.most == 2
    assert c.queued["c"] == [True, False] and (gate.running, gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_leaves_the_queue_and_a_cancelled_entrant_hands_on() -> None:
    gate = CycleGate(1)
    c = Cycles(gate)
    for name in "abcd":
        c.start(name)
    await settle()
    c.tasks["b"].cancel()  # waiting: it leaves the queue
    await settle()
    assert gate.waiting == 2 and c.queued["b"] == [True, False]
    c.finish["a"].set()  # c is let in ...
    await asyncio.sleep(0)
    c.tasks["c"].cancel()  # ... and cancelled before it ran: its turn goes to d
    await settle()
    assert c.inside == ["d"] and gate.running == 1
    c.finish["d"].set()
    results = await asyncio.gather(*c.tasks.values(), return_exceptions=True)
    assert [isinstance(r, asyncio.CancelledError) for r in results] == [False, True, True,
                                                                         False]
    assert c.order == ["a", "d"] and (gate.running, gate.waiting) == (0, 0)


async def test_a_new_limit_applies_to_waiting_cycles() -> None:
    gate = CycleGate(1)
    c = Cycles(gate)
    for name in "abcd":
        c.start(name)
    await settle()
    gate.limit = 3  # a reload raised it: two more go in at once
    await settle()
    assert c.inside == ["a", "b", "c"]
    gate.limit = 1  # lowered: nobody is thrown out, nobody new goes in until below it
    c.finish["a"].set()
    c.finish["b"].set()
    await settle()
    assert c.inside == ["c"]
    c.finish["c"].set()
    await settle()
    assert c.inside == ["d"]
    c.finish["d"].set()
    await asyncio.gather(*c.tasks.values())
    with pytest.raises(ValueError):
        gate.limit = 0
