"""The engine: runtime loop, state stores, router, matcher, executor and timers (internal API)."""
