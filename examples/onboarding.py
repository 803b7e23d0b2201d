"""Onboarding drip: welcome a new user, then send tips or, if they stall, a nudge.

On ``app/account.created`` (``{"userId": "u1", "email": "a@example.com"}``):

1. step ``send-welcome`` sends the welcome email;
2. the run waits up to 3 days for ``app/onboarding.completed`` with the same ``data.userId``;
3. if it arrives, step ``send-tips`` sends power-user tips; otherwise step ``send-nudge`` sends a reminder
   to finish onboarding.

Run it (see ``examples/README.md``)::

    streams worker examples.onboarding:app
    streams send app/account.created '{"userId": "u1", "email": "a@example.com"}'
    streams send app/onboarding.completed '{"userId": "u1"}'

``EXAMPLE_TIMEOUT=30s`` shortens the 3-day wait to try the nudge path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from examples._common import Duration, namespace_from_env, timeout_from_env
from streams import App, Event, Step

ACCOUNT_CREATED = "app/account.created"
ONBOARDING_COMPLETED = "app/onboarding.completed"

#: ``send_email(to, template)``: sends one email and returns a JSON value (e.g. the provider's message id).
SendEmail = Callable[[str, str], Any]

logger = logging.getLogger(__name__)


def log_email(to: str, template: str) -> dict[str, str]:
    """Stand-in email sender: logs instead of sending. Pass your provider's client to ``build_app``."""
    logger.info("email %r to %s", template, to)
    return {"to": to, "template": template}


def register(app: App, *, send_email: SendEmail = log_email, completion_timeout: Duration = "3d") -> None:
    """Registers the ``onboarding-drip`` function on ``app``.

    Args:
        app: The app to register on.
        send_email: ``send_email(to, template)`` with template ``"welcome"``, ``"tips"`` or ``"nudge"``.
        completion_timeout: How long to wait for the user to finish onboarding.
    """

    @app.function(id="onboarding-drip", trigger=ACCOUNT_CREATED)
    async def onboarding_drip(event: Event, step: Step) -> dict[str, Any]:
        email = event.data["email"]
        await step.run("send-welcome", send_email, email, "welcome")

        # match="data.userId": the completion event's data.userId must equal this trigger's. The literal
        # arguments let the worker route app/onboarding.completed events by data.userId up front.
        completed = await step.wait_for_event(
            "wait-for-onboarding",
            event=ONBOARDING_COMPLETED,
            match="data.userId",
            timeout=completion_timeout,
        )
        if completed is None:  # 3 days passed without the event
            await step.run("send-nudge", send_email, email, "nudge")
            return {"userId": event.data["userId"], "outcome": "nudged"}
        await step.run("send-tips", send_email, email, "tips")
        return {"userId": event.data["userId"], "outcome": "tips", "completion_event": completed.id}


def build_app(namespace: str | None = None, *, send_email: SendEmail = log_email, **options: Any) -> App:
    """An app with the onboarding function; settings come from ``STREAMS_*`` variables.

    Args:
        namespace: Topic prefix; default ``STREAMS_NAMESPACE``, else ``dev``.
        send_email: The email sender (a fake in tests).
        **options: ``completion_timeout``.
    """
    app = App(namespace_from_env(namespace))
    register(app, send_email=send_email, **options)
    return app


#: ``streams worker examples.onboarding:app``
app = build_app(completion_timeout=timeout_from_env("3d"))
