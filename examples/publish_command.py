"""Drive virtbus from any NATS client: publish a command, then read its outcome from the log."""

import asyncio
import json

import nats


async def main() -> None:
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    command = {"kind": "StartVM", "id": "my-start-1", "name": "centos7", "namespace": "default"}
    await js.publish("virt.cmd.vm.default.centos7.StartVM", json.dumps(command).encode())
    # The outcome is an event on the VM's subject tree whose correlationid is the command id.
    sub = await js.subscribe("virt.vm.default.centos7.>", ordered_consumer=True)
    async for msg in sub.messages:
        event = json.loads(msg.data)
        if event["correlationid"] == "my-start-1":
            print(event["type"], event["data"])  # io.virtbus.vm.start_requested.v1 or ...rejected
            break
    await nc.close()


asyncio.run(main())
