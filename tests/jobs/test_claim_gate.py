"""jobs.claim_gate.ClaimGate: how many of an endpoint's deliveries a worker holds claimed."""

from __future__ import annotations

import asyncio

import pytest

from jobs.claim_gate import ClaimGate


async def test_admits_up_to_the_limit_then_in_arrival_order_as_places_are_given_back():
    gate = ClaimGate(100)
    assert await gate.take(50, 0.1) and await gate.take(50, 0.1)
    third = asyncio.create_task(gate.take(50, 5))
    fourth = asyncio.create_task(gate.take(10, 5))  # would fit after the third, not before it
    await asyncio.sleep(0.01)
    assert not third.done() and not fourth.done()

    gate.give(30)  # 70 taken: the third (50) does not fit yet, so neither goes
    await asyncio.sleep(0.01)
    assert not third.done() and not fourth.done()
    gate.give(20)  # 50 taken: the third fits; the fourth would make 110
    assert await asyncio.wait_for(third, 1) is True
    await asyncio.sleep(0.01)
    assert not fourth.done() and gate.taken == 100
    gate.give(10)
    assert await asyncio.wait_for(fourth, 1) is True and gate.taken == 100


async def test_one_batch_is_always_admitted_when_none_is_held():
    gate = ClaimGate(10)
    assert await gate.take(50, 0.1)  # bigger than the limit, but nothing else is claimed
    assert not await gate.take(1, 0.05)
    gate.give(50)
    assert gate.taken == 0 and await gate.take(1, 0.05)


async def test_a_wait_that_runs_out_takes_nothing_and_lets_the_next_one_in():
    gate = ClaimGate(100)
    assert await gate.take(80, 0.1)
    big = asyncio.create_task(gate.take(50, 0.05))  # gives up
    small = asyncio.create_task(gate.take(20, 5))  # fits, but waits behind the big one
    await asyncio.sleep(0.01)
    assert not small.done()
    assert await big is False
    assert await asyncio.wait_for(small, 1) is True
    assert gate.taken == 100


async def test_a_cancelled_wait_takes_nothing():
    gate = ClaimGate(10)
    assert await gate.take(10, 0.1)
    waiting = asyncio.create_task(gate.take(5, 5))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.give(10)
    assert gate.taken == 0
