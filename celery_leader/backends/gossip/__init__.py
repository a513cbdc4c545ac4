"""``gossip://``: leader locks agreed among the candidates themselves, over Serf."""

from .backend import QUERY_NAME, Acceptor, AcceptorStore, GossipBackend, GossipLock

__all__ = ["GossipBackend", "GossipLock", "Acceptor", "AcceptorStore", "QUERY_NAME"]
