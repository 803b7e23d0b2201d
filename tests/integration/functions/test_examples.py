"""The examples in ``examples/`` end to end against the real broker, with fake LLM, email and CMS calls.

Each example module has ``register(app, **deps)``; the tests register it on the harness's app with fakes
and short timeouts, so every happy path and every timeout path runs in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streams import Event, StreamsConfig

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on the path
    sys.path.insert(0, str(REPO))

from examples import blog_generator, cart_abandonment, generate_and_publish, onboarding  # noqa: E402
from streams._cli import _load_app  # noqa: E402
from streams._correlation import CorrelationIndex  # noqa: E402

pytestmark = pytest.mark.kafka

#: Long enough never to fire in a happy-path test.
NEVER = "120s"
#: Short enough to fire quickly in a timeout-path test.
SHORT = "3s"


class Calls:
    """Records the calls of a fake (step callables run on worker threads)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def record(self, *args: Any) -> None:
        with self._lock:
            self.calls.append(args)


def _output(run: dict[str, Any]) -> Any:
    return json.loads(run["output_json"])


# --------------------------------------------------------------------------------------------------
# Onboarding drip
# --------------------------------------------------------------------------------------------------


def _onboarding(harness: Any, timeout: str) -> Calls:
    emails = Calls()

    def send_email(to: str, template: str) -> str:
        emails.record(to, template)
        return f"msg-{template}"

    onboarding.register(harness.app, send_email=send_email, completion_timeout=timeout)
    return emails


def test_onboarding_sends_tips_when_the_user_completes_onboarding(harness: Any) -> None:
    emails = _onboarding(harness, NEVER)
    harness.start()
    harness.send(Event(name="app/account.created", data={"userId": "u1", "email": "u1@example.com"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="app/onboarding.completed", data={"userId": "someone-else"}, id="other"))
    harness.send(Event(name="app/onboarding.completed", data={"userId": "u1"}, id="done-u1"))
    (run,) = harness.wait_ended(1, "onboarding-drip")
    assert run["status"] == "COMPLETED"
    assert _output(run) == {"userId": "u1", "outcome": "tips", "completion_event": "done-u1"}
    assert emails.calls == [("u1@example.com", "welcome"), ("u1@example.com", "tips")]


def test_onboarding_nudges_when_the_user_stalls(harness: Any) -> None:
    emails = _onboarding(harness, SHORT)
    harness.start()
    harness.send(Event(name="app/account.created", data={"userId": "u2", "email": "u2@example.com"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="app/onboarding.completed", data={"userId": "u3"}))  # another user
    (run,) = harness.wait_ended(1, "onboarding-drip")
    assert (run["status"], _output(run)) == ("COMPLETED", {"userId": "u2", "outcome": "nudged"})
    assert emails.calls == [("u2@example.com", "welcome"), ("u2@example.com", "nudge")]


# --------------------------------------------------------------------------------------------------
# AI blog generator
# --------------------------------------------------------------------------------------------------

#: Completion ids the fake LLM returns per subject. Pasted between quotes unescaped, the first would
#: turn the condition into `... == "cmpl-" || true || "k"` (matching every selection); the second holds
#: backslashes and quotes that only an escaped literal keeps apart from its look-alikes.
COMPLETIONS = {
    "kafka": 'cmpl-" || true || "k',
    "rocks": 'cmpl-\\r\\"o\\',
}
#: Topic selections that must not resolve either run: prefixes, escaped and unescaped look-alikes.
DECOYS = [
    "cmpl-",
    'cmpl-\\" || true || \\"k',  # the first id as JSON-escaped text
    'cmpl-" || true || "k ',
    'cmpl-\\r"o\\',  # the second id without the backslash before its quote
    'cmpl-\\\\r\\\\"o\\\\',  # the second id with its backslashes doubled
    'cmpl-\\r\\"o',  # the second id without its trailing backslash
    "",
]


def _blog(harness: Any, timeout: str) -> tuple[Calls, Calls]:
    drafted, saved = Calls(), Calls()

    def generate_ideas(subject: str) -> dict[str, Any]:
        return {"completion_id": COMPLETIONS[subject], "topics": [f"{subject} 101", f"{subject} at scale"]}

    def draft_post(topic: str) -> dict[str, Any]:
        drafted.record(topic)
        return {"title": topic, "body": f"All about {topic}."}

    def save_post(post: dict[str, Any]) -> str:
        saved.record(post["title"])
        return f"post:{post['title']}"

    blog_generator.register(
        harness.app,
        generate_ideas=generate_ideas,
        draft_post=draft_post,
        save_post=save_post,
        selection_timeout=timeout,
    )
    return drafted, saved


def test_blog_generator_routes_topic_selections_by_completion_id() -> None:
    """The declared wait routes selections under data.completionId only: no per-name route, no scan miss."""
    app = blog_generator.build_app("routing")
    (function,) = app.functions.values()
    assert list(CorrelationIndex.from_functions([function])) == [
        ("ai/post.topic.selected", "data.completionId")
    ]


def test_blog_generator_takes_the_selection_for_its_own_completion(harness: Any) -> None:
    drafted, saved = _blog(harness, NEVER)
    harness.start()
    harness.send(
        Event(name="ai/post.requested", data={"subject": "kafka"}),
        Event(name="ai/post.requested", data={"subject": "rocks"}),
    )
    harness.wait_for(lambda: len(harness.runs) == 2, what="runs started")
    harness.send(
        *[Event(name="ai/post.topic.selected", data={"completionId": d, "topic": "decoy"}) for d in DECOYS]
    )
    time.sleep(1)  # the decoys reach the waits (or their buffers) first
    harness.send(
        Event(
            name="ai/post.topic.selected",
            data={"completionId": COMPLETIONS["kafka"], "topic": "kafka at scale"},
        ),
        Event(
            name="ai/post.topic.selected", data={"completionId": COMPLETIONS["rocks"], "topic": "rocks 101"}
        ),
    )
    runs = harness.wait_ended(2, "blog-generator")
    outputs = sorted((_output(run) for run in runs), key=lambda out: out["topic"])
    assert [run["status"] for run in runs] == ["COMPLETED", "COMPLETED"]
    assert outputs == [
        {
            "status": "saved",
            "completion_id": COMPLETIONS["kafka"],
            "topic": "kafka at scale",
            "post_id": "post:kafka at scale",
        },
        {
            "status": "saved",
            "completion_id": COMPLETIONS["rocks"],
            "topic": "rocks 101",
            "post_id": "post:rocks 101",
        },
    ]
    assert sorted(drafted.calls) == [("kafka at scale",), ("rocks 101",)]
    assert sorted(saved.calls) == [("kafka at scale",), ("rocks 101",)]


def test_blog_generator_gives_up_without_a_selection(harness: Any) -> None:
    drafted, saved = _blog(harness, SHORT)
    harness.start()
    harness.send(Event(name="ai/post.requested", data={"subject": "kafka"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="ai/post.topic.selected", data={"completionId": "cmpl-", "topic": "decoy"}))
    (run,) = harness.wait_ended(1, "blog-generator")
    assert (run["status"], _output(run)) == (
        "COMPLETED",
        {"status": "no-topic-selected", "completion_id": COMPLETIONS["kafka"]},
    )
    assert (drafted.calls, saved.calls) == ([], [])


# --------------------------------------------------------------------------------------------------
# Cart abandonment
# --------------------------------------------------------------------------------------------------


def _cart(harness: Any, timeout: str) -> Calls:
    reminders = Calls()

    def send_reminder(email: str, cart_id: str) -> None:
        reminders.record(email, cart_id)

    cart_abandonment.register(harness.app, send_reminder=send_reminder, purchase_timeout=timeout)
    return reminders


def test_cart_abandonment_sends_nothing_when_the_cart_is_bought(harness: Any) -> None:
    reminders = _cart(harness, NEVER)
    harness.start()
    harness.send(Event(name="cart/product.added", data={"cart_id": "c1", "email": "a@example.com"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="cart/purchased", data={"cart_id": "c1"}, id="buy-c1"))
    (run,) = harness.wait_ended(1, "cart-abandonment")
    assert (run["status"], _output(run)) == (
        "COMPLETED",
        {"cart_id": "c1", "outcome": "purchased", "purchase_event": "buy-c1"},
    )
    assert reminders.calls == []


def test_cart_abandonment_sends_one_reminder_per_cart(harness: Any) -> None:
    reminders = _cart(harness, SHORT)
    harness.start()
    for i in range(3):
        harness.send(
            Event(
                name="cart/product.added", data={"cart_id": "c1", "email": "a@example.com"}, id=f"c1-add-{i}"
            )
        )
        time.sleep(0.05)
    harness.send(
        Event(name="cart/product.added", data={"cart_id": "c2", "email": "b@example.com"}, id="c2-add")
    )
    runs = harness.wait_ended(4, "cart-abandonment")
    by_trigger = {run["trigger_event"].id: run["status"] for run in runs}
    assert by_trigger == {
        "c1-add-0": "CANCELLED",
        "c1-add-1": "CANCELLED",
        "c1-add-2": "COMPLETED",
        "c2-add": "COMPLETED",
    }
    assert sorted(reminders.calls) == [("a@example.com", "c1"), ("b@example.com", "c2")]
    assert len(harness.system_events("streams/function.cancelled", count=2)) == 2


# --------------------------------------------------------------------------------------------------
# Generate, review, publish
# --------------------------------------------------------------------------------------------------


def _content(harness: Any, timeout: str) -> tuple[Calls, Calls]:
    published, archived = Calls(), Calls()

    def generate_content(brief: str) -> dict[str, Any]:
        return {"title": brief, "body": f"Draft for {brief}."}

    def publish(content_id: str, content: dict[str, Any]) -> str:
        published.record(content_id, content["title"])
        return f"https://cms.test/{content_id}"

    def archive(content_id: str, content: dict[str, Any], feedback: str) -> None:
        archived.record(content_id, content["title"], feedback)

    generate_and_publish.register(
        harness.app,
        generate_content=generate_content,
        publish=publish,
        archive=archive,
        review_timeout=timeout,
    )
    return published, archived


def test_generate_and_publish_publishes_approved_and_archives_rejected(harness: Any) -> None:
    published, archived = _content(harness, NEVER)
    harness.start()
    harness.send(
        Event(name="content/generation.requested", data={"content_id": "a1", "brief": "Launch"}),
        Event(name="content/generation.requested", data={"content_id": "a2", "brief": "Pricing"}),
    )
    harness.wait_for(lambda: len(harness.runs) == 2, what="runs started")
    harness.send(
        Event(name="content/review.completed", data={"content_id": "a1", "approved": True}),
        Event(
            name="content/review.completed",
            data={"content_id": "a2", "approved": False, "feedback": "too long"},
        ),
    )
    runs = {
        run["trigger_event"].data["content_id"]: run for run in harness.wait_ended(2, "generate-and-publish")
    }
    assert {cid: run["status"] for cid, run in runs.items()} == {"a1": "COMPLETED", "a2": "COMPLETED"}
    assert _output(runs["a1"]) == {"content_id": "a1", "status": "published", "url": "https://cms.test/a1"}
    assert _output(runs["a2"]) == {"content_id": "a2", "status": "archived", "feedback": "too long"}
    assert published.calls == [("a1", "Launch")]
    assert archived.calls == [("a2", "Pricing", "too long")]


def test_generate_and_publish_does_nothing_when_review_times_out(harness: Any) -> None:
    published, archived = _content(harness, SHORT)
    harness.start()
    harness.send(Event(name="content/generation.requested", data={"content_id": "a3", "brief": "Ignored"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="content/review.completed", data={"content_id": "a4", "approved": True}))
    (run,) = harness.wait_ended(1, "generate-and-publish")
    assert (run["status"], _output(run)) == ("COMPLETED", {"content_id": "a3", "status": "review-timed-out"})
    assert (published.calls, archived.calls) == ([], [])


# --------------------------------------------------------------------------------------------------
# The documented commands
# --------------------------------------------------------------------------------------------------


def test_every_example_loads_as_a_worker_app() -> None:
    """`streams worker examples.<name>:app` finds an App with the example's function."""
    expected = {
        "onboarding": "onboarding-drip",
        "blog_generator": "blog-generator",
        "cart_abandonment": "cart-abandonment",
        "generate_and_publish": "generate-and-publish",
    }
    for module, function_id in expected.items():
        app = _load_app(f"examples.{module}:app")
        assert list(app.functions) == [function_id]


def test_cart_abandonment_runs_with_the_documented_commands(
    streams_config: StreamsConfig, tmp_path: Path
) -> None:
    """`streams worker examples.cart_abandonment:app` + `streams send ...`, as examples/README.md says."""
    env = {
        **os.environ,
        "STREAMS_BOOTSTRAP_SERVERS": streams_config.bootstrap_servers or "",
        "STREAMS_NAMESPACE": streams_config.namespace,
        "EXAMPLE_TIMEOUT": "2s",
        **{f"STREAMS_PARTITIONS_{topic.upper()}": str(n) for topic, n in streams_config.partitions.items()},
    }
    streams = [sys.executable, "-m", "streams"]
    worker = subprocess.Popen(
        [*streams, "worker", "examples.cart_abandonment:app", "--state-dir", str(tmp_path / "state")],
        cwd=REPO,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout or ()), daemon=True)
    reader.start()
    try:
        subprocess.run(
            [*streams, "send", "cart/product.added", '{"cart_id":"c1","email":"a@x"}'],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 90
        while not any("reminder for cart c1 to a@x" in line for line in lines):
            assert worker.poll() is None, "worker exited:\n" + "".join(lines)
            assert time.monotonic() < deadline, "no reminder logged:\n" + "".join(lines)
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        reader.join(timeout=5)
