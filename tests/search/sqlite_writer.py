"""One of several processes writing to one SQLite file at once (``test_distributed``): what a worker
does to the store, as fast as it can (attempt, heartbeats, result), then what the driver does (its own
upsert of the same result). Imports only the store, so the processes start quickly."""

from __future__ import annotations

from typing import Any


def write_all(url: str, run: int, k: int, specs: list[tuple[str, dict[str, Any]]]) -> str:
    from cellsearch.store import Store

    store = Store(url)
    for key, spec in specs:
        att = store.start_attempt(key, spec, f"writer:{k}", run, 0)
        store.beat(att)
        store.beat(att)
        result = {"status": "ok", "valid": 0.1, "worker": f"writer:{k}", "history": [{"step": 1, "loss": 1.0}]}
        store.finish_attempt(att, key, spec, result, run, 0, write=True)
        store.add_evaluation(key, spec, result, run, 0)
        store.reap(grace=60.0)
    store.close()
    return "ok"
