"""Framework integrations, one module (or small package) per framework.

Each one is thin: it builds an :class:`celery_leader.Election` (or
:class:`celery_leader.AsyncElection`) and decides, right before the framework does
its periodic work, whether this process is the confirmed leader. Nothing here is
imported by the engine; importing an integration imports its framework.

Queues: :mod:`.huey` (Huey consumers), :mod:`.taskiq` (``taskiq scheduler``),
:mod:`.periodiq` (Dramatiq's periodiq),
:mod:`.arq` (arq workers' cron jobs). See docs/integrations.md.
"""
