"""An in-process Flower ``Grid``: messages go straight to a ClientApp per node, no Ray, no network.

For tests and benchmarks of the server's protocol paths (SecAgg+, DP wrappers, drop-outs) at the
cost of the training alone. Each node keeps its own ``Context`` across messages, as a SuperNode
does; each message and reply is copied, as serialization would, so neither side can see the
other's objects; a ClientApp exception becomes an error reply, as Flower's runtime makes it.
``drop(node_id, message)`` returning True makes a node go silent from that message on (a site
that fails mid-round), and ``observe(direction, message)`` sees every message that crosses.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from types import SimpleNamespace

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1


def content_bytes(content: RecordDict) -> int:
    """Bytes of every record in a message: arrays and metrics as Flower counts them, config
    records (SecAgg+ sends keys, shares and masked vectors as lists of bytes there) as their
    serialized size."""
    records = [*content.array_records.values(), *content.metric_records.values()]
    serialized = sum(len(r.deflate()) for r in content.config_records.values())
    return sum(r.count_bytes() for r in records) + serialized


class InProcessGrid:
    """A Grid over ``num_nodes`` nodes (ids 101, 102, ...) running ``client_app``."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        node_config: Callable[[int], dict] | None = None,
        drop: Callable[[int, Message], bool] | None = None,
        observe: Callable[[str, Message], None] | None = None,
    ):
        # Messages built in this process take their run and sender from Flower's task identity.
        TaskIdentity.task_id, TaskIdentity.run_id = 1, RUN_ID
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.app = client_app
        self.nodes = [101 + i for i in range(num_nodes)]
        self.contexts = {
            nid: Context(
                run_id=RUN_ID,
                node_id=nid,
                node_config=(node_config or _partition(num_nodes))(i),
                state=RecordDict(),
                run_config={},
            )
            for i, nid in enumerate(self.nodes)
        }
        self.drop = drop or (lambda nid, msg: False)
        self.observe = observe or (lambda direction, msg: None)
        self.dead: set[int] = set()
        self.run = SimpleNamespace(run_id=RUN_ID)

    def set_run(self, run) -> None:
        self.run = run

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.nodes if n not in self.dead]

    def _deliver(self, msg: Message) -> Message | None:
        nid = msg.metadata.dst_node_id
        if nid in self.dead or self.drop(nid, msg):
            self.dead.add(nid)
            return None
        msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        self.observe("down", msg)
        inbound = copy.deepcopy(msg)
        try:
            reply = self.app(inbound, self.contexts[nid])
        except Exception as exc:  # Flower's runtime turns a ClientApp exception into an error
            reply = Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                reply_to=inbound,
            )
        reply.metadata.__dict__["_reply_to_message_id"] = msg.metadata.message_id
        reply = copy.deepcopy(reply)
        self.observe("up", reply)
        return reply

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [r for r in (self._deliver(m) for m in messages) if r is not None]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid delivers through send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid delivers through send_and_receive only")


def _partition(num_nodes: int) -> Callable[[int], dict]:
    return lambda i: {"partition-id": i, "num-partitions": num_nodes}
