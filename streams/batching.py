"""Micro-batching that keeps consuming while a batch is being processed.

Faust's ``stream.take_events`` stops pulling messages while the loop body runs, so
filling a batch and processing it alternate and the worker idles half the time. Here
the agent's own loop only moves events into a bounded queue (no acknowledgement), and a
second task takes batches from it: up to ``max_size`` events, waiting at most
``within_s`` for the first batch to fill. Events are acknowledged (so their offsets can
be committed) only after their batch's effects are durable: at-least-once, like
``take_events``, but with fetching overlapped with learning and writing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import EventT, StreamT


async def drain_batch(queue: asyncio.Queue[Any], max_size: int, within_s: float) -> list[Any]:
    """Wait for one item, then take what is ready, waiting at most ``within_s`` in all."""
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while len(batch) < max_size:
        try:
            batch.append(queue.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch


async def consume_in_batches(stream: StreamT, max_size: int, within_s: float,
                             handle: Callable[[list[EventT]], Awaitable[None]],
                             queue_size: int | None = None) -> None:
    """Run ``handle`` on batches of ``stream``'s events; ack each batch after it returns.

    ``handle`` must make the batch's effects durable (or dead-letter them) before it
    returns. If it raises, the worker crashes without acknowledging the batch, so the
    events are redelivered after the restart.
    """
    queue: asyncio.Queue[EventT] = asyncio.Queue(maxsize=queue_size or 4 * max_size)
    raw_stream = stream.noack()

    async def process_forever() -> None:
        while True:
            batch = await drain_batch(queue, max_size, within_s)
            await handle(batch)
            for event in batch:
                await raw_stream.ack(event)

    processor = asyncio.ensure_future(process_forever())
    try:
        async for event in raw_stream.events():
            if processor.done():  # surface the processor's failure as the agent's
                processor.result()
            await queue.put(event)
    finally:
        processor.cancel()
