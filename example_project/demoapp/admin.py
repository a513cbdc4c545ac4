from django.contrib import admin

from .models import Run


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("at", "kind", "instance", "token", "worker")
    list_filter = ("kind", "instance")
