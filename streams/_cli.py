"""The ``streams`` command line.

Settings come from ``--namespace``/``--bootstrap-servers`` when given, else ``STREAMS_*`` variables.
Every error the package raises on purpose is printed as one line and exits with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from streams._app import App
from streams._broker_cli import kafka_group
from streams._config import StreamsConfig
from streams._event import Event
from streams._topics import create_topics, describe_topics
from streams.errors import StreamsError


class _Group(click.Group):
    """Turns package errors into a clear one-line message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StreamsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("--namespace", "-n", default=None, help="App namespace (topic prefix); else STREAMS_NAMESPACE.")
@click.option(
    "--bootstrap-servers", "-b", default=None, help="Kafka bootstrap servers; else STREAMS_BOOTSTRAP_SERVERS."
)
@click.pass_context
def main(ctx: click.Context, namespace: str | None, bootstrap_servers: str | None) -> None:
    """Durable, event-coordinated functions on Apache Kafka."""
    overrides = {"namespace": namespace, "bootstrap_servers": bootstrap_servers}
    ctx.obj = {key: value for key, value in overrides.items() if value is not None}


def _config(ctx: click.Context) -> StreamsConfig:
    return StreamsConfig.from_env(**ctx.obj)


@main.command()
@click.argument("name")
@click.argument("data", default="{}")
@click.option("--id", "event_id", default=None, help="Event id (defaults to a new ULID); dedupes runs.")
@click.option("--avro", is_flag=True, help="Send in Avro (Confluent wire format) instead of JSON.")
@click.pass_context
def send(ctx: click.Context, name: str, data: str, event_id: str | None, avro: bool) -> None:
    """Send event NAME with JSON object DATA; prints the event id."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
    kwargs: dict[str, Any] = {"name": name, "data": payload}
    if event_id is not None:
        kwargs["id"] = event_id
    config = _config(ctx)
    with App(config.namespace, config, event_format="avro" if avro else "json") as app:
        for sent in app.send(Event(**kwargs)):
            click.echo(sent)


@main.group()
def topics() -> None:
    """Create or inspect the app's topics."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create every missing topic; fail if an existing one differs."""
    config = _config(ctx.find_root())
    created = create_topics(config)
    for name in created:
        click.echo(f"created {name}")
    click.echo(f"{len(created)} created, all {len(describe_topics(config))} topics present")


@topics.command("describe")
@click.pass_context
def topics_describe(ctx: click.Context) -> None:
    """Show partitions and cleanup policy of every topic, against what the app expects."""
    config = _config(ctx.find_root())
    for state in describe_topics(config):
        spec = state.spec
        if not state.exists:
            status = "missing"
        elif state.partitions == spec.partitions and state.cleanup_policy == spec.cleanup_policy:
            status = "ok"
        else:
            status = "MISMATCH"
        click.echo(
            f"{spec.name:<45} partitions={state.partitions or '-'}/{spec.partitions} "
            f"cleanup={state.cleanup_policy or '-'}/{spec.cleanup_policy} {status}"
        )


main.add_command(kafka_group)


def _load_app(spec: str) -> Any:
    """Imports ``module:attribute`` (``module`` alone means its ``app``)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from None
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, App):
        raise click.BadParameter(
            f"{spec!r} is not an App (write module:attribute, e.g. shop.functions:app)", param_hint="APP"
        )
    return app


@main.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--processors",
    "roles",
    default="router,matcher,executor,timers",
    show_default=True,
    help="Comma-separated roles to run in this worker.",
)
@click.option("--state-dir", type=click.Path(file_okay=False), default=None, help="RocksDB state directory.")
@click.option(
    "--mode",
    type=click.Choice(["threads", "processes"]),
    default="threads",
    show_default=True,
    help="Run roles on threads of one process, or one child process each.",
)
@click.option("--max-concurrent-steps", type=int, default=16, show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
def worker(
    app_spec: str, roles: str, state_dir: str | None, mode: str, max_concurrent_steps: int, log_level: str
) -> None:
    """Run the processors of APP (module:attribute) until SIGTERM."""
    import logging

    from processors.engine import Engine, EngineSettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    role_list = tuple(role.strip() for role in roles.split(",") if role.strip())
    if mode == "processes" and len(role_list) > 1:
        from processors.supervisor import run_role_processes

        # Each role builds its own engine in its own interpreter: Kafka clients and thread pools
        # do not survive fork, and user functions need not be picklable.
        argv = ["--state-dir", state_dir] if state_dir else []
        argv += ["--max-concurrent-steps", str(max_concurrent_steps), "--log-level", log_level]
        sys.exit(run_role_processes(app_spec, role_list, argv))
    app = _load_app(app_spec)
    settings = EngineSettings(roles=role_list, max_concurrent_steps=max_concurrent_steps)
    sys.exit(Engine(app, settings).run(state_dir=state_dir))


@main.group()
def runs() -> None:
    """Inspect and control runs."""


@runs.command("cancel")
@click.argument("run_id")
@click.option("--reason", default="cancelled from the command line", show_default=True)
@click.pass_context
def runs_cancel(ctx: click.Context, run_id: str, reason: str) -> None:
    """Cancel run RUN_ID."""
    config = _config(ctx.find_root())
    with App(config.namespace, config) as app:
        app.cancel(run_id, reason)
    click.echo(f"cancel requested for {run_id}")
