"""A JSON status view for health checks and dashboards.

``GET .../`` lists every lease in the database and the elections this process runs;
``GET .../<name>/`` one lease (404 if unknown). Add ``?leader=1`` to answer 503 unless this
process currently leads that election (a readiness probe for "the active scheduler").
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from .runner import active_elections
from .status import lease_rows


def _local(name: str | None = None) -> list[dict]:
    return [
        {"name": e.name, "identity": e.identity, "leading": e.is_leader, "leader": e.leader, "token": e.token}
        for e in active_elections()
        if name is None or e.name == name
    ]


@require_GET
def status(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"elections": lease_rows(), "local": _local()})


@require_GET
def election_status(request: HttpRequest, name: str) -> JsonResponse:
    rows = lease_rows(name=name)
    local = _local(name)
    if not rows and not local:
        return JsonResponse({"error": f"no election named {name!r}"}, status=404)
    body = {"election": rows[0] if rows else None, "local": local}
    if request.GET.get("leader") in ("1", "true", "yes"):
        leading = any(item["leading"] for item in local)
        body["leading"] = leading
        return JsonResponse(body, status=200 if leading else 503)
    return JsonResponse(body)
