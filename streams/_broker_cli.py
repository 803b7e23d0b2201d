"""``streams kafka ...``: install, start, stop and inspect the local development broker.

The group is added to the main CLI with ``main.add_command(kafka_group)``, whose error handling turns
a :class:`~streams.errors.BrokerError` into a one-line message and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from streams._broker import KAFKA_VERSION, LocalKafka

_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Broker data directory [default: ~/.cache/streams/kafka-data/default].",
)


@click.group("kafka")
def kafka_group() -> None:
    """Local single-node Kafka (KRaft, from jars; needs Java 17+, and Maven once to install)."""


@kafka_group.command("install")
@click.option("--force", is_flag=True, help="Download again even if installed.")
def install_command(force: bool) -> None:
    """Download the Kafka jars into the cache (STREAMS_KAFKA_HOME overrides where)."""
    kafka = LocalKafka.from_env()
    if not kafka.installed or force:
        click.echo(f"Installing Kafka {KAFKA_VERSION} into {kafka.home} (one-time download)...", err=True)
    click.echo(kafka.install(force=force))


@kafka_group.command("start")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Client port [default: a free one]."
)
@_DATA_DIR
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True, help="Seconds to wait.")
def start_command(port: int | None, data_dir: Path | None, timeout: float) -> None:
    """Start the broker in the background; prints its bootstrap address as the last line."""
    kafka = LocalKafka.from_env()
    if not kafka.installed:
        click.echo(f"Installing Kafka {KAFKA_VERSION} into {kafka.home} (one-time download)...", err=True)
    bootstrap = kafka.start(port, data_dir, timeout=timeout)
    status = kafka.status(data_dir)
    click.echo(f"Kafka {KAFKA_VERSION} running (pid {status.pid}), log: {status.log_file}", err=True)
    click.echo(bootstrap)


@kafka_group.command("stop")
@_DATA_DIR
@click.option(
    "--timeout", type=click.FloatRange(0), default=30.0, show_default=True, help="Seconds before SIGKILL."
)
def stop_command(data_dir: Path | None, timeout: float) -> None:
    """Stop the broker (controlled shutdown, then kill after the timeout)."""
    kafka = LocalKafka.from_env()
    pid = kafka.stop(data_dir, timeout=timeout)
    click.echo("not running" if pid is None else f"stopped (pid {pid})")


@kafka_group.command("status")
@_DATA_DIR
def status_command(data_dir: Path | None) -> None:
    """Show whether the broker runs; exits with status 3 when it does not."""
    status = LocalKafka.from_env().status(data_dir)
    click.echo(f"running: {'yes' if status.running else 'no'}")
    if status.running:
        click.echo(f"pid: {status.pid}")
        click.echo(f"bootstrap: {status.bootstrap}")
    click.echo(f"data_dir: {status.data_dir}")
    click.echo(f"log: {status.log_file}")
    if not status.running:
        click.get_current_context().exit(3)
