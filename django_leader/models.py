"""The ``Lease`` table of the ``django://`` backend.

``record`` holds the leader record as the Go seed's JSON (so Go candidates and the other
backends' tools read the same thing); ``holder`` and ``token`` repeat two of its fields for
the admin and for queries. ``version`` is the compare-and-swap counter. ``LeaseFence``
keeps the highest token per name even if a lease row is deleted. Rows are written
only by :mod:`django_leader.backend` with raw conditional SQL, never through ``save()``.
"""

from __future__ import annotations

from django.db import models


class Lease(models.Model):
    name = models.CharField(max_length=253, unique=True)
    record = models.TextField()
    version = models.BigIntegerField()
    holder = models.CharField(max_length=253, blank=True, default="")
    token = models.BigIntegerField(default=0, help_text="fencing token (leaderTransitions)")

    class Meta:
        ordering = ["name"]
        verbose_name = "lease"

    def __str__(self) -> str:
        return f"{self.name} ({self.holder or 'free'}, token {self.token})"


class LeaseFence(models.Model):
    """The highest fencing token ever written per election; it survives deleting a ``Lease`` row.

    Raised in the same transaction as each acquisition (never on renewals), so a lease row
    deleted by hand and created again continues above every token already handed out.
    """

    name = models.CharField(max_length=253, unique=True)
    token = models.BigIntegerField()

    class Meta:
        ordering = ["name"]
        verbose_name = "lease fence"

    def __str__(self) -> str:
        return f"{self.name}: {self.token}"
