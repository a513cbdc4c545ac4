"""``kubernetes://NAMESPACE``: a ``coordination.k8s.io/v1`` Lease, shared with client-go."""

from .backend import (
    PREFERRED_HOLDER_ANNOTATION,
    RBAC_VERBS,
    KubernetesBackend,
    KubernetesLock,
    format_microtime,
    lease_to_record,
    parse_microtime,
    record_to_spec,
)

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
