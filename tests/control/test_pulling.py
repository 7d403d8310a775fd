"""The consuming loops outlive their consumers: the intake's and a node worker's durable consumer
deleted under them (by an admin, or lost with a server that came back without it), each loop
subscribes again after a few failed pulls and takes its work, rather than pulling from nothing
forever while its process looks alive."""

from __future__ import annotations

from driverstack import Stack, seed

from bus.client import send
from events import commands as c
from events.names import COMMANDS_STREAM, WORK_STREAM


async def test_the_intake_and_a_worker_subscribe_again_when_their_consumers_are_deleted(
    stack: Stack,
) -> None:
    stack.provide_seed_volumes("node-a")
    worker = await stack.driver_node("node-a")
    await send(stack.nc, seed())  # both loops are pulling
    js = stack.nc.jetstream()
    assert await js.delete_consumer(COMMANDS_STREAM, "orchestrator-intake")
    assert await js.delete_consumer(WORK_STREAM, "worker-node-a")

    # The command waits in its stream until the intake's new consumer takes it (send waits 20 s
    # for its outcome), and the start's work until the worker's does.
    await send(stack.nc, c.StartVM(name="centos7"), wait_s=30)
    s = await stack.until("centos7", "Running", within=30)
    assert (s.node, worker.puller.remade) == ("node-a", 1)
    made = [(ci.name, ci.config.filter_subject) for ci in await js.consumers_info(WORK_STREAM)]
    assert made == [("worker-node-a", "virt.work.node-a.>")]
