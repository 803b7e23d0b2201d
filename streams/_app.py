"""``App``: the namespace users register functions on and send events through."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from streams._client import EventClient, EventFormat
from streams._codec import RecordCodec
from streams._config import StreamsConfig
from streams._event import Event
from streams._expr import TRIGGER_VARIABLES, WAIT_VARIABLES, compile_expression
from streams._function import CancelOn, FunctionDef, Trigger, Wait, define_function
from streams._topics import create_topics
from streams.errors import ExpressionError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


class App:
    """One application: a topic namespace, its configuration and its functions.

    Args:
        namespace: Topic prefix (``App("shop")`` uses ``shop.events``, ``shop.runs``, ...).
        config: A complete configuration; when omitted it is built from ``settings`` and the
            ``STREAMS_*`` environment variables.
        event_format: Wire format used by :meth:`send`.
        **settings: Any :class:`StreamsConfig` field, e.g. ``bootstrap_servers="host:9092"``.

    Raises:
        ConfigError: A setting is wrong; the message names it.
    """

    def __init__(
        self,
        namespace: str,
        config: StreamsConfig | None = None,
        *,
        event_format: EventFormat = "json",
        **settings: Any,
    ) -> None:
        if config is None:
            config = StreamsConfig.from_env(namespace=namespace, **settings)
        elif settings or config.namespace != namespace:
            config = config.replace(namespace=namespace, **settings)
        self.config = config
        self._client = EventClient(config, event_format=event_format)
        self._functions: dict[str, FunctionDef] = {}

    @property
    def namespace(self) -> str:
        """The topic prefix."""
        return self.config.namespace

    def function(
        self,
        *,
        id: str,
        trigger: str | Trigger | Iterable[str | Trigger],
        retries: int = 4,
        idempotency: str | None = None,
        on_failure: Callable[..., Any] | None = None,
        cancel_on: Iterable[CancelOn] | CancelOn = (),
        waits: Iterable[Wait] | Wait = (),
    ) -> Callable[[F], F]:
        """Registers a durable function; use as a decorator.

        Args:
            id: Stable function id (names runs, history and system events).
            trigger: Event name(s) or :class:`Trigger` (with a CEL ``if_`` filter over ``event``).
            retries: Retries per step and for the function body (default 4, i.e. 5 attempts).
            idempotency: CEL expression over ``event`` whose value dedupes runs for 24 h.
            on_failure: ``(event, step)`` function run with ``streams/function.failed`` when a run fails.
            cancel_on: Rules that cancel runs when a correlated event arrives.
            waits: Waits to route up front (for waits the source scan cannot see).

        Raises:
            UsageError: An option is invalid, or the id is already registered.
        """

        def register(fn: F) -> F:
            definition = define_function(
                fn,
                id=id,
                trigger=trigger,
                retries=retries,
                idempotency=idempotency,
                on_failure=on_failure,
                cancel_on=cancel_on,
                waits=waits,
            )
            _compile_expressions(definition)
            if definition.id in self._functions:
                raise UsageError(f"function id {definition.id!r} is registered twice in {self!r}")
            self._functions[definition.id] = definition
            return fn

        return register

    @property
    def functions(self) -> Mapping[str, FunctionDef]:
        """Registered functions by id (failure handlers included, as ``<id>.on-failure``)."""
        out = dict(self._functions)
        for definition in self._functions.values():
            handler = definition.failure_handler()
            if handler is not None:
                out[handler.id] = handler
        return out

    def send(self, events: Event | Iterable[Event], *, key: str | None = None) -> list[str]:
        """Sends events to the app's ``events`` topic and waits for the broker's acknowledgement.

        Returns:
            The event ids, in order.

        Raises:
            EventValidationError: An event breaks the envelope rules (nothing is sent).
            DeliveryError: The broker did not acknowledge every event.
        """
        return self._client.send(events, key=key)

    async def send_async(self, events: Event | Iterable[Event], *, key: str | None = None) -> list[str]:
        """Like :meth:`send`, for asyncio code."""
        return await self._client.send_async(events, key=key)

    def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        """Cancels a run: no further step starts, pending timers and waits are dropped.

        A ``step.run`` already executing finishes, but its result is not used. The run ends as
        ``cancelled`` and emits ``streams/function.cancelled``. Cancelling an ended or unknown run
        does nothing.

        Raises:
            DeliveryError: The cancel command was not acknowledged.
        """
        command = RecordCodec().encode(
            "streams.RunCommand",
            {
                "run_id": run_id,
                "function_id": "",
                "body": ("streams.CancelRun", {"reason": reason, "cancel_event_id": None}),
            },
        )
        self._client.produce("runs", run_id.encode(), command)

    def create_topics(self) -> list[str]:
        """Creates the app's topics if missing and checks the existing ones; returns the created names."""
        return create_topics(self.config)

    def close(self) -> None:
        """Flushes and releases Kafka clients."""
        self._client.close()

    def __enter__(self) -> App:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"App({self.namespace!r})"


def _compile_expressions(definition: FunctionDef) -> None:
    """Compiles every CEL expression of a function at registration, so a typo fails at import time.

    Raises:
        ExpressionError: With where the expression is and the position of the error.
    """
    for where, source in definition.expressions():
        reads_async = "cancel_on" in where or " wait " in where
        try:
            compile_expression(source, variables=WAIT_VARIABLES if reads_async else TRIGGER_VARIABLES)
        except ExpressionError as err:
            raise ExpressionError(source, f"{where}: {str(err).split(': ', 1)[-1]}") from None
