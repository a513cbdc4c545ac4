"""One row per piece of scheduled work done: which instance ran what, when, with which token."""

from django.db import models


class Run(models.Model):
    kind = models.CharField(max_length=20)  # beat | apscheduler | cron
    instance = models.CharField(max_length=253)  # the leader that scheduled it
    token = models.BigIntegerField(null=True)  # its fencing token
    worker = models.CharField(max_length=253, blank=True, default="")  # who executed it (beat tasks)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S.%f} {self.kind:<11} {self.instance:<12} token {self.token}"
