"""Generate, review, publish: an LLM drafts content, a human approves or rejects it within 48 hours.

On ``content/generation.requested`` (``{"content_id": "a1", "brief": "Launch post for v2"}``):

1. step ``generate-content`` has the LLM write a draft from the brief;
2. the run waits up to 48 hours for ``content/review.completed`` with the same ``data.content_id``
   (``{"content_id": "a1", "approved": true}`` or ``{"content_id": "a1", "approved": false,
   "feedback": "too long"}``);
3. approved: step ``publish`` publishes the draft to the CMS; rejected: step ``archive`` archives it with
   the reviewer's feedback; no review in time: nothing happens, the run ends with
   ``{"status": "review-timed-out"}`` (the draft simply never goes live).

Run it (see ``examples/README.md``)::

    streams worker examples.generate_and_publish:app
    streams send content/generation.requested '{"content_id": "a1", "brief": "Launch post for v2"}'
    streams send content/review.completed '{"content_id": "a1", "approved": true}'

``EXAMPLE_TIMEOUT=30s`` shortens the 48-hour wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from examples._common import Duration, namespace_from_env, timeout_from_env
from streams import App, Event, Step

GENERATION_REQUESTED = "content/generation.requested"
REVIEW_COMPLETED = "content/review.completed"

#: ``generate_content(brief)`` → ``{"title": str, "body": str}`` (one LLM completion).
GenerateContent = Callable[[str], dict[str, Any]]
#: ``publish(content_id, content)`` → e.g. the published URL.
Publish = Callable[[str, dict[str, Any]], Any]
#: ``archive(content_id, content, feedback)`` → any JSON value.
Archive = Callable[[str, dict[str, Any], str], Any]

logger = logging.getLogger(__name__)


def template_content(brief: str) -> dict[str, Any]:
    """Stand-in LLM: a title and a one-line body. Pass your LLM client instead."""
    return {"title": brief, "body": f"{brief}: the details."}


def log_publish(content_id: str, content: dict[str, Any]) -> str:
    """Stand-in CMS publish: logs and returns a URL."""
    logger.info("published %s: %r", content_id, content["title"])
    return f"https://cms.example.com/{content_id}"


def log_archive(content_id: str, content: dict[str, Any], feedback: str) -> None:
    """Stand-in CMS archive: logs."""
    logger.info("archived %s (%r): %s", content_id, content["title"], feedback)


def register(
    app: App,
    *,
    generate_content: GenerateContent = template_content,
    publish: Publish = log_publish,
    archive: Archive = log_archive,
    review_timeout: Duration = "48h",
) -> None:
    """Registers the ``generate-and-publish`` function on ``app``.

    Args:
        app: The app to register on.
        generate_content: LLM call writing the draft (a fake in tests).
        publish: CMS call publishing an approved draft.
        archive: CMS call archiving a rejected draft with the feedback.
        review_timeout: How long reviewers have.
    """

    @app.function(id="generate-and-publish", trigger=GENERATION_REQUESTED)
    async def generate_and_publish(event: Event, step: Step) -> dict[str, Any]:
        content_id = event.data["content_id"]
        content = await step.run("generate-content", generate_content, event.data["brief"])

        review = await step.wait_for_event(
            "wait-for-review", event=REVIEW_COMPLETED, match="data.content_id", timeout=review_timeout
        )
        if review is None:
            return {"content_id": content_id, "status": "review-timed-out"}
        if review.data.get("approved") is True:
            url = await step.run("publish", publish, content_id, content)
            return {"content_id": content_id, "status": "published", "url": url}
        feedback = str(review.data.get("feedback", ""))
        await step.run("archive", archive, content_id, content, feedback)
        return {"content_id": content_id, "status": "archived", "feedback": feedback}


def build_app(
    namespace: str | None = None,
    *,
    generate_content: GenerateContent = template_content,
    publish: Publish = log_publish,
    archive: Archive = log_archive,
    **options: Any,
) -> App:
    """An app with the generate-and-publish function; settings come from ``STREAMS_*`` variables.

    Args:
        namespace: Topic prefix; default ``STREAMS_NAMESPACE``, else ``dev``.
        generate_content: LLM call writing the draft.
        publish: CMS call publishing an approved draft.
        archive: CMS call archiving a rejected draft.
        **options: ``review_timeout``.
    """
    app = App(namespace_from_env(namespace))
    register(app, generate_content=generate_content, publish=publish, archive=archive, **options)
    return app


#: ``streams worker examples.generate_and_publish:app``
app = build_app(review_timeout=timeout_from_env("48h"))
