"""``kubernetes://NAMESPACE``: a ``coordination.k8s.io/v1`` Lease, shared with client-go.

* :mod:`.backend` - the URL, the API client, the Lock contract on one Lease (CAS on
  ``resourceVersion``, watch);
* :mod:`.lease` - the Lease <-> LeaderRecord codec (pure functions, client-go's format);
* :mod:`.events` - watch streams in, ``LeaderElection`` Events out.
"""

from .backend import RBAC_VERBS, KubernetesBackend, KubernetesLock
from .lease import PREFERRED_HOLDER_ANNOTATION, format_microtime, lease_to_record, parse_microtime, record_to_spec

__all__ = [
    "KubernetesBackend",
    "KubernetesLock",
    "format_microtime",
    "parse_microtime",
    "lease_to_record",
    "record_to_spec",
    "PREFERRED_HOLDER_ANNOTATION",
    "RBAC_VERBS",
]
