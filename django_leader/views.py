"""A JSON status view for health checks and dashboards.

``GET .../`` lists every lease in the database (when ``LEADER_ELECTION['URL']`` is
``django://``; other backends have no listing) and the elections this process runs;
``GET .../<name>/`` one lease (404 if unknown). Each lease is judged as ``celery-leader
status --json`` judges it (:mod:`django_leader.status`): ``state`` held / expired / free /
unreadable, ``token``, ``renewed_seconds_ago`` against ``lease_duration``, ``last_slot``.
Add ``?leader=1`` to answer 503 unless this process currently leads that election (a
readiness probe for "the active scheduler").

The view shows identities (host names, process ids) and tokens. With
``LEADER_ELECTION['STATUS_PERMISSION'] = "django_leader.view_lease"`` it answers 403 to
users without that permission; a malformed ``LEADER_ELECTION`` answers 503 with the
reason, never 500.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from celery_leader.urls import redact

from .conf import SettingsError, leader_settings
from .runner import active_elections
from .status import configured_alias, lease_rows

log = logging.getLogger("celery_leader.django")


def _stored(name: str | None = None) -> tuple[list[dict], str | None]:
    """The lease table's rows when the leases are in this database (django://), else none."""
    alias = configured_alias()
    if alias is None:
        return [], None
    try:
        return lease_rows(alias, name), None
    except DatabaseError as exc:
        log.warning("leader status: cannot read the lease table: %s", redact(str(exc)))
        return [], f"cannot read the lease table of database {alias!r}: {type(exc).__name__}"


def _local(name: str | None = None) -> list[dict]:
    return [
        {"name": e.name, "identity": e.identity, "leading": e.is_leader, "leader": e.leader, "token": e.token}
        for e in active_elections()
        if name is None or e.name == name
    ]


def _refused(request: HttpRequest) -> JsonResponse | None:
    """503 for unusable settings, 403 without the configured permission, else None."""
    try:
        permission = leader_settings().status_permission
    except SettingsError as exc:
        return JsonResponse({"error": f"LEADER_ELECTION is invalid: {exc}"}, status=503)
    if permission is not None:
        user = getattr(request, "user", None)
        if user is None or not user.has_perm(permission):
            return JsonResponse({"error": f"permission {permission} required"}, status=403)
    return None


@require_GET
def status(request: HttpRequest) -> JsonResponse:
    refused = _refused(request)
    if refused is not None:
        return refused
    rows, error = _stored()
    body: dict = {"elections": rows, "local": _local()}
    if error:
        body["error"] = error
    return JsonResponse(body, status=503 if error else 200)


@require_GET
def election_status(request: HttpRequest, name: str) -> JsonResponse:
    refused = _refused(request)
    if refused is not None:
        return refused
    rows, error = _stored(name)
    local = _local(name)
    if error and not local:
        return JsonResponse({"error": error}, status=503)
    if not rows and not local:
        return JsonResponse({"error": f"no election named {name!r}"}, status=404)
    body: dict[str, Any] = {"election": rows[0] if rows else None, "local": local}
    if request.GET.get("leader") in ("1", "true", "yes"):
        leading = any(item["leading"] for item in local)
        body["leading"] = leading
        return JsonResponse(body, status=200 if leading else 503)
    return JsonResponse(body)
