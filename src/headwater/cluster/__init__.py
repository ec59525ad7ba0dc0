"""Several Headwater nodes as one mesh, on a NATS JetStream cluster.

How this works: ``headwater up --nats URLS`` makes the node a member of a
mesh (:class:`Mesh`): its event log is JetStream (every Broker's and
Channel's stream, replicated), its state store is JetStream KV (the
resources every node runs, the node registry, leases), and its MQTT broker
routes through NATS (:mod:`headwater.mqtt.mesh`). Nodes never talk to each
other directly: everything they share goes through NATS, so the mesh is as
available as the NATS cluster under it. See the README's "Running several
nodes".
"""

from headwater.cluster.connection import ClusterError, NatsOptions, parse_servers
from headwater.cluster.leases import Lease, LeasedComponent
from headwater.cluster.mesh import Mesh, default_node_name
from headwater.cluster.nodes import MESH_PROTOCOL, NodeInfo, NodeRegistry
from headwater.cluster.status import merge_statuses

__all__ = [
    "MESH_PROTOCOL",
    "ClusterError",
    "Lease",
    "LeasedComponent",
    "Mesh",
    "NatsOptions",
    "NodeInfo",
    "NodeRegistry",
    "default_node_name",
    "merge_statuses",
    "parse_servers",
]
