"""Golden replay histories: every ``golden/*.json`` is replayed pass by pass and must match exactly.

A history names a function of ``replay_cases``, its trigger event and the pass clock, then lists passes.
Before each pass, ``execute`` runs steps planned by the previous pass through ``execute_step`` (their
outcomes must equal ``outcomes``; a failure is memoized as a final failure) and ``add`` adds memos
written by hand; the pass result must equal ``expect`` (``describe_result``; sent events without their
random ``id``/``ts``). Every pass is replayed twice to check determinism.

Regenerate the expectations after an intended change with
``python tests/unit/replay/test_replay_golden.py --update`` and review the diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from replay_cases import FUNCTIONS

from processors.replay import (
    Memo,
    MemoStatus,
    Planned,
    RunStep,
    StepFailed,
    StepKind,
    StepOutcome,
    describe_result,
    execute_step,
    replay,
)
from streams._event import Event

GOLDEN = Path(__file__).parent / "golden"


def _memo(spec: dict[str, Any]) -> Memo:
    if spec.get("status", "completed") == "completed":
        output = spec["output"] if "output" in spec else json.dumps(spec["value"])
        return Memo.completed(StepKind(spec["kind"]), output)
    return Memo.failed(StepKind(spec["kind"]), spec["error_type"], spec["error_message"])


def _outcome(outcome: StepOutcome) -> dict[str, Any]:
    if isinstance(outcome, StepFailed):
        return {
            "status": "failed",
            "error_type": outcome.error_type,
            "message": outcome.message,
            "retriable": outcome.retriable,
            "retry_at_ms": outcome.retry_at_ms,
        }
    return {"status": "succeeded", "output": json.loads(outcome.output_json)}


def _normalize(described: dict[str, Any]) -> dict[str, Any]:
    for step in described.get("steps", []):
        if step["kind"] == "send":
            step["events"] = [{"name": e["name"], "data": e["data"]} for e in step["events"]]
    return described


def run_history(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Replays a history; returns, per pass, the actual ``outcomes`` and ``expect``."""
    function = FUNCTIONS[spec["function"]]
    event = Event.from_dict(spec["trigger"])
    now_ms: int = spec["now_ms"]
    memos: dict[str, Memo] = {}
    previous: Planned | None = None
    actual: list[dict[str, Any]] = []
    for number, step_pass in enumerate(spec["passes"]):
        outcomes: dict[str, Any] = {}
        for step_id in step_pass.get("execute", []):
            assert previous is not None, f"pass {number}: nothing planned to execute"
            (step,) = [s for s in previous.steps if s.step_id == step_id]
            assert isinstance(step, RunStep)
            outcome = execute_step(step, now_ms=now_ms)
            outcomes[step_id] = _outcome(outcome)
            if isinstance(outcome, StepFailed):
                memos[step_id] = Memo.failed(StepKind.RUN, outcome.error_type, outcome.message)
            else:
                memos[step_id] = Memo.completed(StepKind.RUN, outcome.output_json)
        for step_id, memo in step_pass.get("add", {}).items():
            memos[step_id] = _memo(memo)
        now_ms = step_pass.get("now_ms", now_ms)
        result = replay(function, event, memos, now_ms)
        again = replay(function, event, dict(memos), now_ms)
        described = _normalize(describe_result(result))
        assert _normalize(describe_result(again)) == described, f"pass {number} is not deterministic"
        actual.append({"outcomes": outcomes, "expect": described})
        previous = result if isinstance(result, Planned) else None
    return actual


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_golden_history(path: Path) -> None:
    spec = json.loads(path.read_text())
    actual = run_history(spec)
    assert len(actual) == len(spec["passes"])
    for number, (step_pass, got) in enumerate(zip(spec["passes"], actual, strict=True)):
        assert got["outcomes"] == step_pass.get("outcomes", {}), f"{path.name} pass {number} outcomes"
        assert got["expect"] == step_pass["expect"], f"{path.name} pass {number} result"


def test_every_case_has_a_golden_history() -> None:
    covered = {json.loads(p.read_text())["function"] for p in GOLDEN.glob("*.json")}
    assert covered == set(FUNCTIONS)


def test_memo_status_values() -> None:
    assert [s.value for s in MemoStatus] == ["completed", "failed"]


def _update() -> None:  # pragma: no cover - maintenance helper
    for path in sorted(GOLDEN.glob("*.json")):
        spec = json.loads(path.read_text())
        for step_pass, got in zip(spec["passes"], run_history(spec), strict=True):
            if got["outcomes"]:
                step_pass["outcomes"] = got["outcomes"]
            step_pass["expect"] = got["expect"]
        path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
        print("updated", path.name)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: test_replay_golden.py --update")
    _update()
