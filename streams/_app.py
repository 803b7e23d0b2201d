"""``App``: the namespace users register functions on and send events through."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from streams._client import EventClient, EventFormat
from streams._config import StreamsConfig
from streams._event import Event
from streams._topics import create_topics


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

    @property
    def namespace(self) -> str:
        """The topic prefix."""
        return self.config.namespace

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
