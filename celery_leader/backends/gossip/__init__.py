"""``gossip://HOST:PORT?members=n1,n2,n3``: leader locks agreed among the candidates, over Serf.

* :mod:`.backend` - the URL, the serf connection, the members and their quorum;
* :mod:`.proposer` - one lock name as a CASPaxos register (the Lock contract);
* :mod:`.acceptor` - the durable votes every member keeps and serves;
* :mod:`.serf` - a small client for the serf agent's RPC protocol.
"""

from .acceptor import QUERY_NAME, Acceptor, AcceptorStore
from .backend import GossipBackend
from .proposer import GossipLock

__all__ = ["GossipBackend", "GossipLock", "Acceptor", "AcceptorStore", "QUERY_NAME"]
