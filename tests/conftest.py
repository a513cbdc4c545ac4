import logging

logging.getLogger("celery_leader").setLevel(logging.DEBUG)
