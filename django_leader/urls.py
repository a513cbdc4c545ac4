"""Include with ``path("leader/", include("django_leader.urls"))``."""

from django.urls import path

from . import views

app_name = "django_leader"

urlpatterns = [
    path("", views.status, name="status"),
    path("<str:name>/", views.election_status, name="election"),
]
