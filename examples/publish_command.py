"""Drive virtbus from any NATS client: publish a command, then read its outcome from the log.

Run from where `make run` runs (it logs in as the stack's admin, with the credentials and CA the
stack wrote in `.virtbus/`); a user added with `virtbus auth add-user NAME` logs in with its own
`NAME.creds`, gets its replies on `_INBOX_NAME`, and ends the subject with its own NAME: the
server lets it publish nowhere else, so that last token is who the log records as the actor.
"""

import asyncio
import json
import os
import ssl

import nats

ME = "admin"


async def main() -> None:
    nc = await nats.connect(
        os.environ.get("VIRTBUS_NATS_URL", "nats://127.0.0.1:4222"), user_credentials=f".virtbus/creds/{ME}.creds",
        tls=ssl.create_default_context(cafile=".virtbus/tls/ca.pem"), inbox_prefix=f"_INBOX_{ME}",
    )  # fmt: skip
    js = nc.jetstream()
    command = {"kind": "StartVM", "id": "my-start-1", "name": "centos7", "namespace": "default"}
    await js.publish(f"virt.cmd.vm.default.centos7.StartVM.{ME}", json.dumps(command).encode())
    # The outcome is an event on the VM's subject tree whose correlationid is the command id.
    sub = await js.subscribe("virt.vm.default.centos7.>", ordered_consumer=True)
    async for msg in sub.messages:
        event = json.loads(msg.data)
        if event["correlationid"] == "my-start-1":
            print(event["type"], event["actor"], event["data"])  # ...start_requested.v1 admin {}
            break
    await nc.close()


asyncio.run(main())
