"""The private names of kademlia/rpcudp that p2p.dht overrides or relies on still exist."""

from __future__ import annotations

from importlib.metadata import version

from kademlia.crawling import SpiderCrawl
from kademlia.network import Server
from kademlia.protocol import KademliaProtocol
from kademlia.routing import KBucket, RoutingTable
from rpcudp.protocol import RPCProtocol


def test_pinned_versions() -> None:
    assert version("kademlia") == "2.2.3"
    assert version("rpcudp") == "5.0.1"


def test_overridden_names_exist() -> None:
    for cls, names in {
        RPCProtocol: ["_solve_datagram", "_accept_request", "_accept_response", "_timeout",
                      "__getattr__", "datagram_received"],
        KademliaProtocol: ["welcome_if_new", "call_find_node", "call_ping", "rpc_store",
                           "rpc_find_value", "rpc_find_node", "rpc_ping", "handle_call_response"],
        RoutingTable: ["find_neighbors", "add_contact", "get_bucket_for", "lonely_buckets",
                       "split_bucket", "remove_contact"],
        KBucket: ["add_node", "head", "depth", "has_in_range", "touch_last_updated"],
        SpiderCrawl: ["_find", "_nodes_found"],
        Server: ["_create_protocol", "refresh_table", "listen", "stop"],
    }.items():
        for name in names:
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}"
    assert Server.protocol_class is KademliaProtocol
    proto = RPCProtocol(wait_timeout=1)
    assert proto._outstanding == {} and proto._wait_timeout == 1
    bucket = KBucket(0, 10, 2)
    assert hasattr(bucket, "nodes") and hasattr(bucket, "replacement_nodes")
    server = Server(ksize=3, alpha=2, node_id=b"\0" * 20, storage=object())
    assert server.refresh_loop is None and server.node.id == b"\0" * 20
