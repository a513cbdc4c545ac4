"""Lock backends, one module each. They are found through the ``celery_leader.backends``
entry-point group (see :mod:`celery_leader.registry`)."""
