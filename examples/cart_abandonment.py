"""Cart abandonment: one reminder per abandoned cart, 24 hours after its last change.

On ``cart/product.added`` (``{"cart_id": "c1", "email": "a@example.com"}``) a run waits up to 24 hours for
``cart/purchased`` with the same ``data.cart_id``. If none comes, step ``send-reminder`` emails the
customer.

Adding three products starts three runs, but only one reminder may go out. ``cancel_on`` does that: a
``cart/product.added`` for the same cart cancels every run of this function started by an *earlier*
``cart/product.added`` (a run's own trigger never cancels it), so only the run of the latest addition
survives, and its 24 hours count from the last change.

Run it (see ``examples/README.md``)::

    streams worker examples.cart_abandonment:app
    streams send cart/product.added '{"cart_id": "c1", "email": "a@example.com"}'
    streams send cart/purchased '{"cart_id": "c1"}'     # or don't, and get the reminder

``EXAMPLE_TIMEOUT=30s`` shortens the 24-hour wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from examples._common import Duration, namespace_from_env, timeout_from_env
from streams import App, CancelOn, Event, Step

PRODUCT_ADDED = "cart/product.added"
PURCHASED = "cart/purchased"

#: ``send_reminder(email, cart_id)`` → any JSON value (e.g. the provider's message id).
SendReminder = Callable[[str, str], Any]

logger = logging.getLogger(__name__)


def log_reminder(email: str, cart_id: str) -> dict[str, str]:
    """Stand-in email sender: logs instead of sending."""
    logger.info("reminder for cart %s to %s", cart_id, email)
    return {"to": email, "cart_id": cart_id}


def register(
    app: App, *, send_reminder: SendReminder = log_reminder, purchase_timeout: Duration = "24h"
) -> None:
    """Registers the ``cart-abandonment`` function on ``app``.

    Args:
        app: The app to register on.
        send_reminder: The reminder sender (a fake in tests).
        purchase_timeout: How long after the last added product a cart counts as abandoned.
    """

    @app.function(
        id="cart-abandonment",
        trigger=PRODUCT_ADDED,
        # Without match= this would cancel every cart's run on any product.added: always scope it.
        cancel_on=[CancelOn(event=PRODUCT_ADDED, match="data.cart_id")],
    )
    async def cart_abandonment(event: Event, step: Step) -> dict[str, Any]:
        cart_id = event.data["cart_id"]
        purchased = await step.wait_for_event(
            "wait-for-purchase", event=PURCHASED, match="data.cart_id", timeout=purchase_timeout
        )
        if purchased is not None:
            return {"cart_id": cart_id, "outcome": "purchased", "purchase_event": purchased.id}
        await step.run("send-reminder", send_reminder, event.data["email"], cart_id)
        return {"cart_id": cart_id, "outcome": "reminded"}


def build_app(
    namespace: str | None = None, *, send_reminder: SendReminder = log_reminder, **options: Any
) -> App:
    """An app with the cart-abandonment function; settings come from ``STREAMS_*`` variables.

    Args:
        namespace: Topic prefix; default ``STREAMS_NAMESPACE``, else ``dev``.
        send_reminder: The reminder sender.
        **options: ``purchase_timeout``.
    """
    app = App(namespace_from_env(namespace))
    register(app, send_reminder=send_reminder, **options)
    return app


#: ``streams worker examples.cart_abandonment:app``
app = build_app(purchase_timeout=timeout_from_env("24h"))
