"""Celery: the beat scheduler (:mod:`.beat`) and singleton worker queues (:mod:`.worker`)."""
