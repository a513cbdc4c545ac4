"""``python -m celery_leader.integrations.rq cron|scheduler ...`` (same as ``celery-leader-rq``)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="celery-leader-rq")
