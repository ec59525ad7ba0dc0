"""A Headwater process for chaos tests: a Broker on SQLite, its HTTP ingress, one Trigger.

Stands in for ``headwater up`` (the runtime) so that a test can SIGKILL a real
process mid-stream and start it again on the same data directory. Prints
``PORT <n>`` once the ingress listens; runs until killed.

    python broker_process.py DATA_DIR SINK_URL [PORT]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from headwater.eventing import (
    AiohttpTransport,
    Broker,
    DeliverySpec,
    HttpSink,
    Ingress,
    IngressServer,
    Trigger,
    new_session,
)
from headwater.log import EARLIEST
from headwater.log.sqlite import SqliteLog


async def main(data_dir: Path, sink_url: str, port: int) -> None:
    async with (
        await SqliteLog.open(data_dir / "log.db", durability="normal") as log,
        Broker("default", "chaos", log) as broker,
        new_session() as session,
    ):
        trigger = Trigger(
            "to-sink",
            HttpSink(sink_url, transport=AiohttpTransport(session)),
            attributes={"type": "chaos.reading"},
            # The first start must not miss events that arrive while it starts.
            start=EARLIEST,
            delivery=DeliverySpec(retry=100, backoff_policy="linear", backoff_delay=0.05),
        )
        await broker.add_trigger(trigger)
        ingress = Ingress(lambda ns, name: broker if (ns, name) == ("default", "chaos") else None)
        async with IngressServer(ingress.app(), port=port) as server:
            print(f"PORT {server.port}", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
