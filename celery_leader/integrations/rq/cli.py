"""``celery-leader-rq``: RQ's scheduler commands, elected.

``celery-leader-rq cron CONFIG`` takes the options of ``rq cron`` (``--url``, ``--config``,
``--path``... through RQ's own shared options) plus the leader options;
``celery-leader-rq scheduler`` takes those of ``rqscheduler``. Bad configuration ends
the command with a one-line ``Error: ...`` naming what to fix, never a traceback.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ...errors import ConfigurationError
from ...urls import redact
from .config import CATCH_UP_POLICIES


class ConfigError(click.ClickException):
    """Bad configuration: ``Error: ...`` on one line and exit status 2 (as ``celery-leader``)."""

    exit_code = 2


def leader_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The election options every command shares (same names as ``celery-leader run``)."""
    options = [
        click.option("--leader-url", default=None, metavar="URL",
                     help="lock URL (default: LEADER_ELECTION['URL'], $CELERY_LEADER_URL, else RQ's own Redis)"),
        click.option("--leader-name", default=None, metavar="NAME", help="election name (or prefix, for workers)"),
        click.option("--identity", default=None, help="this candidate's identity (default: <hostname>-<pid>-<random>)"),
        click.option("--lease-duration", type=float, default=None, metavar="S", help="default 15"),
        click.option("--renew-deadline", type=float, default=None, metavar="S", help="default 10"),
        click.option("--retry-period", type=float, default=None, metavar="S", help="default 2"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _explicit(kwargs: dict[str, Any], catch_up: str | None = None) -> dict[str, Any]:
    values = {
        "URL": kwargs.pop("leader_url", None),
        "NAME": kwargs.pop("leader_name", None),
        "IDENTITY": kwargs.pop("identity", None),
        "LEASE_DURATION": kwargs.pop("lease_duration", None),
        "RENEW_DEADLINE": kwargs.pop("renew_deadline", None),
        "RETRY_PERIOD": kwargs.pop("retry_period", None),
        "CATCH_UP": catch_up,
    }
    return {k: v for k, v in values.items() if v is not None}


@click.group()
def main() -> None:
    """Run RQ's schedulers on every host; only the elected one enqueues (celery-leader)."""


def _cron_command() -> click.Command:
    from rq.cli.helpers import pass_cli_config, read_config_file

    @click.command(name="cron")
    @click.option("--logging-level", "-l", default="INFO", show_default=True,
                  type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False))
    @click.option("--catch-up", type=click.Choice(CATCH_UP_POLICIES), default=None,
                  help="runs that fell due during a failover: run once (default) or skip to the next slot")
    @leader_options
    @click.argument("config_path")
    @pass_cli_config
    def cron(cli_config: Any, logging_level: str, config_path: str, catch_up: str | None, **options: Any) -> None:
        """Starts RQ's cron scheduler; only the elected one enqueues."""
        from .cron import LeaderCronScheduler

        explicit = _explicit(options, catch_up)
        try:
            settings = read_config_file(cli_config.config) if cli_config.config else {}
        except Exception as exc:  # noqa: BLE001 - RQ's settings module failed to import
            raise ConfigError(f"cannot read the RQ settings {cli_config.config!r}: {exc}") from None
        if settings.get("DICT_CONFIG"):
            logging.config.dictConfig(settings["DICT_CONFIG"])
        else:
            _log_to_console(logging_level)
        try:
            scheduler = LeaderCronScheduler(
                connection=cli_config.connection, logging_level=logging_level, leader=explicit, rq_settings=settings
            )
            scheduler.load_config_from_file(config_path)
            scheduler.start()
        except ConfigurationError as exc:
            raise ConfigError(redact_message(str(exc))) from None
        except ImportError as exc:
            raise ConfigError(f"cannot load the cron configuration {config_path!r}: {exc}") from None
        except KeyboardInterrupt:
            sys.exit(0)

    return cron


def _log_to_console(level: str) -> None:
    """Our own lines (elected, standing by, catch-up) beside RQ's, in RQ's format."""
    from rq.logutils import setup_loghandlers

    setup_loghandlers(level=level.upper(), name="celery_leader")


def redact_message(text: str) -> str:
    """Messages already go through ``redact``; this only keeps them to one line."""
    return " ".join(text.split())


@click.command(name="scheduler")
@click.option("-b", "--burst", is_flag=True, help="move the due jobs once (if elected) and quit")
@click.option("-H", "--host", default=lambda: os.environ.get("RQ_REDIS_HOST", "localhost"), help="Redis host")
@click.option("-p", "--port", type=int, default=lambda: int(os.environ.get("RQ_REDIS_PORT", 6379)), help="Redis port")
@click.option("-d", "--db", type=int, default=lambda: int(os.environ.get("RQ_REDIS_DB", 0)), help="Redis database")
@click.option("-P", "--password", default=lambda: os.environ.get("RQ_REDIS_PASSWORD"), help="Redis password")
@click.option("-u", "--url", default=lambda: os.environ.get("RQ_REDIS_URL"), help="Redis URL (overrides host/port/db)")
@click.option("-i", "--interval", type=float, default=60.0, show_default=True, help="seconds between checks")
@click.option("--path", default=".", help="import path (colon separated)")
@click.option("--pid", default=None, metavar="FILE", help="write the PID here")
@click.option("-j", "--job-class", default=None, help="custom RQ Job class")
@click.option("-q", "--queue-class", default=None, help="custom RQ Queue class")
@click.option("--scheduler-class", default=None, metavar="PATH",
              help="a LeaderScheduler subclass (module.Class), e.g. with other keys or leader_election settings")
@click.option("-v", "--verbose", is_flag=True)
@click.option("--quiet", is_flag=True)
@leader_options
def scheduler_command(burst: bool, host: str, port: int, db: int, password: str | None, url: str | None,
                      interval: float, path: str, pid: str | None, job_class: str | None, queue_class: str | None,
                      scheduler_class: str | None, verbose: bool, quiet: bool, **options: Any) -> None:
    """Starts rq-scheduler; only the elected one moves due jobs (options of `rqscheduler`)."""
    from redis import Redis

    try:
        from rq_scheduler.utils import setup_loghandlers  # type: ignore[import-untyped]

        from .rqscheduler import LeaderScheduler
    except ImportError as exc:
        raise ConfigError(
            f"celery-leader-rq scheduler needs rq-scheduler ({exc}): pip install rq-scheduler "
            "(in an environment without django-celery-beat: their crontab modules clash, see docs/rq.md)"
        ) from None

    if path:
        sys.path = path.split(":") + sys.path
    if pid:
        with open(pid, "w") as f:
            f.write(str(os.getpid()))
    try:
        connection = Redis.from_url(url) if url else Redis(host, port, db, password)
    except ValueError as exc:
        raise ConfigError(f"cannot use the Redis URL {redact(url)!r}: {exc}") from None
    level = "DEBUG" if verbose else "WARNING" if quiet else "INFO"
    setup_loghandlers(level)
    _log_to_console(level)
    cls: Any = LeaderScheduler
    if scheduler_class:
        try:
            from rq.utils import import_attribute

            cls = import_attribute(scheduler_class)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"--scheduler-class {scheduler_class!r} cannot be imported: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, LeaderScheduler)):
            raise ConfigError(f"--scheduler-class must name a LeaderScheduler subclass, got {scheduler_class!r}")
    try:
        scheduler = cls(
            connection=connection, interval=interval, job_class=job_class, queue_class=queue_class,
            leader=_explicit(options),
        )
        scheduler.run(burst=burst)
    except ConfigurationError as exc:
        raise ConfigError(redact_message(str(exc))) from None


main.add_command(scheduler_command)
try:
    main.add_command(_cron_command())
except ImportError:  # pragma: no cover - rq without cron support (< 2.5)
    pass
