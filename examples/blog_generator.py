"""AI blog generator: propose topics, wait for a human to pick one, then draft and save the post.

On ``ai/post.requested`` (``{"subject": "Kafka"}``):

1. step ``generate-topic-ideas`` asks the LLM for topic ideas; the completion's id comes back with them;
2. the run waits up to 5 minutes for ``ai/post.topic.selected`` whose ``data.completionId`` is that id
   (the UI shows the ideas and sends the user's choice: ``{"completionId": "...", "topic": "..."}``);
3. step ``draft-post`` has the LLM write the post on the chosen topic, step ``save-post`` stores it.

Without a selection in time the run ends with ``{"status": "no-topic-selected"}``.

Run it (see ``examples/README.md``)::

    streams worker examples.blog_generator:app
    streams send ai/post.requested '{"subject": "Kafka"}'
    # the worker logs the completion id and the ideas; pick one:
    streams send ai/post.topic.selected '{"completionId": "<id from the log>", "topic": "<an idea>"}'
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from examples._common import Duration, namespace_from_env, timeout_from_env
from streams import App, Event, Step, Wait

POST_REQUESTED = "ai/post.requested"
TOPIC_SELECTED = "ai/post.topic.selected"

#: ``generate_ideas(subject)`` → ``{"completion_id": str, "topics": [str, ...]}`` (one LLM completion).
GenerateIdeas = Callable[[str], dict[str, Any]]
#: ``draft_post(topic)`` → ``{"title": str, "body": str}``.
DraftPost = Callable[[str], dict[str, Any]]
#: ``save_post(post)`` → the stored post's id (or any JSON value).
SavePost = Callable[[dict[str, Any]], Any]

logger = logging.getLogger(__name__)


def template_ideas(subject: str) -> dict[str, Any]:
    """Stand-in LLM: three canned ideas under a fresh completion id. Pass your LLM client instead."""
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    topics = [f"What is {subject}?", f"{subject} in production", f"Five {subject} mistakes"]
    logger.info("completion %s proposes %s", completion_id, topics)
    return {"completion_id": completion_id, "topics": topics}


def template_draft(topic: str) -> dict[str, Any]:
    """Stand-in LLM: a one-paragraph post."""
    return {"title": topic, "body": f"# {topic}\n\nA post about {topic.lower()}."}


def log_save(post: dict[str, Any]) -> str:
    """Stand-in CMS: logs the post and returns an id."""
    post_id = f"post-{uuid.uuid4().hex[:8]}"
    logger.info("saved %s: %r", post_id, post["title"])
    return post_id


def cel_string(text: str) -> str:
    """A CEL string literal for ``text``.

    A JSON string is a valid CEL string literal (``"`` and ``\\`` escaped, control characters as
    ``\\n``/``\\uXXXX``). Never paste a value between quotes yourself: ``f'... == "{value}"'`` breaks, or
    matches something else, as soon as the value holds ``"`` or ``\\``.
    """
    return json.dumps(text, ensure_ascii=False)


async def wait_for_topic_selection(step: Step, completion_id: str, timeout: Duration) -> Event | None:
    """Waits for the user's choice among the ideas of completion ``completion_id``.

    The condition holds a value computed at run time (the completion id comes from a step, not from the
    trigger, so ``event.data.…`` substitution cannot supply it), hence an f-string with a properly escaped
    literal. The wait is stored under the key of its top-level ``async.data.completionId == "<id>"`` term,
    so only topic selections with this completion id reach it.
    """
    return await step.wait_for_event(
        "wait-for-topic-selection",
        event=TOPIC_SELECTED,
        if_=f"async.data.completionId == {cel_string(completion_id)}",
        timeout=timeout,
    )


def register(
    app: App,
    *,
    generate_ideas: GenerateIdeas = template_ideas,
    draft_post: DraftPost = template_draft,
    save_post: SavePost = log_save,
    selection_timeout: Duration = "5m",
) -> None:
    """Registers the ``blog-generator`` function on ``app``.

    Args:
        app: The app to register on.
        generate_ideas: LLM call proposing topics (a fake in tests).
        draft_post: LLM call writing the post.
        save_post: CMS call storing the post.
        selection_timeout: How long to wait for the user's choice.
    """

    # Routing. Routers forward an event to the matcher only under the (event name, path) pairs of the
    # correlation index, which is built from code before any run exists. The source scan cannot read an
    # f-string `if_`, so a wait_for_event written inline here with one would be routed *per name* (every
    # topic selection to one matcher key, plus a start-up warning). Instead the wait lives in a helper,
    # which the scan does not read, and is declared here with the pair it needs: topic selections keyed by
    # their data.completionId. A declaration only adds that pair to the index; it is not the wait's
    # condition (which is the if_ above). At run time plan_wait derives the same path from the if_'s
    # top-level `async.data.completionId == "<literal>"` term, finds it routed, and stores the wait under
    # the match key of the literal. `match="data.completionId"` is the simplest declaration with that path
    # (`Wait(event=..., if_='async.data.completionId == "x"')` would route the same); it does not mean
    # "equal to the trigger's completionId" here, as the trigger has none.
    @app.function(
        id="blog-generator",
        trigger=POST_REQUESTED,
        waits=[Wait(event=TOPIC_SELECTED, match="data.completionId")],
    )
    async def blog_generator(event: Event, step: Step) -> dict[str, Any]:
        ideas = await step.run("generate-topic-ideas", generate_ideas, event.data["subject"])
        completion_id = ideas["completion_id"]

        selected = await wait_for_topic_selection(step, completion_id, selection_timeout)
        if selected is None:
            return {"status": "no-topic-selected", "completion_id": completion_id}

        topic = selected.data["topic"]
        post = await step.run("draft-post", draft_post, topic)
        post_id = await step.run("save-post", save_post, post)
        return {"status": "saved", "completion_id": completion_id, "topic": topic, "post_id": post_id}


def build_app(
    namespace: str | None = None,
    *,
    generate_ideas: GenerateIdeas = template_ideas,
    draft_post: DraftPost = template_draft,
    save_post: SavePost = log_save,
    **options: Any,
) -> App:
    """An app with the blog generator; settings come from ``STREAMS_*`` variables.

    Args:
        namespace: Topic prefix; default ``STREAMS_NAMESPACE``, else ``dev``.
        generate_ideas: LLM call proposing topics.
        draft_post: LLM call writing the post.
        save_post: CMS call storing the post.
        **options: ``selection_timeout``.
    """
    app = App(namespace_from_env(namespace))
    register(app, generate_ideas=generate_ideas, draft_post=draft_post, save_post=save_post, **options)
    return app


#: ``streams worker examples.blog_generator:app``
app = build_app(selection_timeout=timeout_from_env("5m"))
