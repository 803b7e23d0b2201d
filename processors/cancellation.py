"""The ``cancel_on`` subscriptions of a run: planned identically by the router and the executor.

The router registers them with the matcher in the transaction that starts the run (so no later event
on the key can overtake them); the executor removes them when the run ends. Both must derive the same
wait ids, keys and timer ids from the function and the trigger, which is what this module does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams._correlation import CorrelationIndex, WaitPlan, plan_wait
from streams._function import FunctionDef


@dataclass(frozen=True, slots=True)
class CancelSubscription:
    """One ``cancel_on`` rule of one run.

    Attributes:
        wait_id: ``cancel:<rule index>``, unique within the run.
        plan: Key and condition the matcher stores it under.
        timeout_ms: How long the rule listens after the trigger was appended.
    """

    wait_id: str
    plan: WaitPlan
    timeout_ms: int


def cancel_subscriptions(
    function: FunctionDef, trigger: Mapping[str, Any], index: CorrelationIndex | None
) -> list[CancelSubscription]:
    """Plans every ``cancel_on`` rule of ``function`` for a run triggered by ``trigger``."""
    return [
        CancelSubscription(
            f"cancel:{i}",
            plan_wait(
                rule.event,
                match=rule.match,
                if_=rule.if_,
                trigger=trigger,
                index=index,
                function_id=function.id,
            ),
            rule.timeout_ms,
        )
        for i, rule in enumerate(function.cancel_on)
    ]


def cancel_timer_id(run_id: str, wait_id: str) -> str:
    """Timer id of a cancel subscription's expiry."""
    return f"{run_id}/{wait_id}"
