"""The session's outbox: heartbeats never overtake reports (the controller checks a
heartbeat's inventory against the reports sent before it), and bulk data never delays
either."""

from __future__ import annotations

import asyncio

from viridian.v1 import agent_pb2 as apb

from node_agent.agent import BULK
from node_agent.session import Outbox


def kind(msg: apb.AgentMessage) -> str:
    return str(msg.WhichOneof("msg"))


def test_control_messages_keep_their_order_and_go_ahead_of_bulk_data() -> None:
    async def scenario() -> list[str]:
        box = Outbox()
        sent = [
            apb.AgentMessage(state=apb.StateData(request_id="s", data=b"x" * 1024)),
            apb.AgentMessage(report=apb.PartitionReport(name="p", epoch=1)),
            apb.AgentMessage(console=apb.ConsoleData(request_id="c", data=b"log")),
            apb.AgentMessage(heartbeat=apb.Heartbeat(seq=1)),
            apb.AgentMessage(event=apb.AgentEvent(partition="p", reason="X")),
        ]
        for msg in sent:
            box.put(msg, urgent=kind(msg) not in BULK)
        stream = box.stream(apb.AgentMessage(hello=apb.SessionHello(node="n")))
        out = [kind(await anext(stream)) for _ in range(len(sent) + 1)]
        box.close()
        return out

    assert asyncio.run(scenario()) == ["hello", "report", "heartbeat", "event", "state",
                                       "console"]
