"""The evolutionary loop, on DEAP's machinery, with every step in the store so a run resumes from it.

Generation 0 is the seed population: the configured seed cells (LSTM and GRU by default) and random
cells. Each later generation breeds ``population`` new cells (tournament-selected parents, mutation or
crossover, each child new to the run), evaluates them, and keeps the best ``population`` of parents
and children: DEAP's ``selBest`` on the score (``selection = "single"``) or ``selNSGA2`` on (score,
parameter count) (``"nsga2"``). DEAP's ``HallOfFame``/``ParetoFront``, ``Statistics`` and ``Logbook``
track the run; each generation's members, logbook record and the RNG state the next generation
starts from are committed together, after its evaluations were committed one by one.

Resuming restores the population and RNG state of the last finished generation and breeds the next
one again (the same children, as the RNG state is the same); evaluations already in the store are
not trained again. So a run killed at any point and resumed ends with the same population as one
that was never interrupted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from deap import base, creator, tools

from .. import zoo
from ..dsl import parse
from ..ir.cell import Cell
from ..ir.params import param_specs
from ..ir.random import random_cell
from ..store.store import Store
from ..tasks import make_task
from .config import RunConfig
from .evaluation import EvalSpec
from .executor import Context, Executor
from .score import cell_score, relative, task_value

REFERENCE = "gru"


def _deap_types() -> tuple[type, type]:
    if not hasattr(creator, "CellIndividual1"):
        creator.create("CellFitness1", base.Fitness, weights=(1.0,))
        creator.create("CellFitness2", base.Fitness, weights=(1.0, -1.0))
        creator.create("CellIndividual1", list, fitness=creator.CellFitness1)
        creator.create("CellIndividual2", list, fitness=creator.CellFitness2)
    return creator.CellIndividual1, creator.CellIndividual2


def _same_cell(a: Any, b: Any) -> bool:
    return bool(a[0].hash == b[0].hash)


def cell_size(cell: Cell, hidden: int) -> tuple[int, int]:
    """(parameters, forward FLOPs per step per sequence) at input width = hidden width = ``hidden``."""
    specs = param_specs(cell, hidden, hidden)
    params = sum(int(np.prod(s.shape)) for s in specs)
    macs = sum(int(np.prod(s.shape)) for s in specs if s.role == "weight")
    return params, 2 * macs + hidden * sum(1 for n in cell.nodes if not n.is_leaf)


@dataclass
class Event:
    kind: str  # generation | queued | result | generation_done
    generation: int = 0
    data: dict[str, Any] = field(default_factory=dict)


class Search:
    def __init__(
        self,
        store: Store,
        run_id: int,
        config: RunConfig,
        executor: Executor,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.config = config
        self.executor = executor
        self.on_event = on_event or (lambda e: None)
        self.hp = config.full_hp()
        self.options = {t: config.full_task_options(t) for t in config.tasks}
        tasks = {t: make_task(t, **self.options[t]) for t in config.tasks}
        self.metric = {t: (task.metric, task.higher_is_better) for t, task in tasks.items()}
        self.reference: dict[str, float | None] = {}
        self.baseline: dict[str, float | None] = {}
        ind1, ind2 = _deap_types()
        self.Individual = ind1 if config.selection == "single" else ind2
        self.hof: Any = (
            tools.HallOfFame(config.hall_of_fame, similar=_same_cell)
            if config.selection == "single"
            else tools.ParetoFront(similar=_same_cell)
        )
        self.stats = tools.Statistics(key=lambda ind: ind.fitness.values[0])
        for name, fn in (("avg", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
            self.stats.register(name, fn)
        self.logbook = tools.Logbook()
        self.trained = 0  # evaluations this session trained
        self.reused = 0  # found in the store instead
        self.rediagnosed = 0  # found in the store without diagnostics, trained again to add them (diagnose = true)
        self.failures = 0
        self._seen: set[str] = set()  # evaluation keys this session has looked up

    # ---- evaluation -------------------------------------------------------------------------

    def specs(self, cell: Cell, trials: Sequence[int] | None = None) -> list[EvalSpec]:
        trials = range(self.config.trials) if trials is None else trials
        return [
            EvalSpec(cell.hash, cell.text, t, self.options[t], self.hp, trial, diagnose=self.config.diagnose)
            for t in self.config.tasks
            for trial in trials
        ]

    def _evaluate(
        self, cells: Sequence[Cell], generation: int | None, trials: Sequence[int] | None = None
    ) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Train what the store lacks; rows by cell hash and task. With ``diagnose`` an evaluation
        stored without diagnostics is trained again for them (its stored result is kept)."""
        hidden = self.hp["hidden"]
        self.store.add_cells(cells, [(hidden, hidden, *cell_size(c, hidden)) for c in cells])
        specs: dict[str, EvalSpec] = {}
        for cell in cells:
            for s in self.specs(cell, trials):
                specs.setdefault(s.key, s)
        known = self.store.evaluations_by_key(list(specs))
        undiagnosed: set[str] = set()
        if self.config.diagnose and known:
            undiagnosed = set(known) - self.store.diagnosed_keys(list(known))
        pending = [s for k, s in specs.items() if k not in known or k in undiagnosed]
        self.reused += sum(1 for k in known if k not in self._seen and k not in undiagnosed)  # trained before this session
        self.rediagnosed += len(undiagnosed)
        self._seen.update(specs)
        self.on_event(
            Event(
                "queued",
                generation or 0,
                {
                    "total": len(specs),
                    "pending": len(pending),
                    "cached": len(specs) - len(pending),
                    "rediagnose": len(undiagnosed),
                },
            )
        )
        for spec, result in self.executor.run(pending, Context(self.run_id, generation)):  # workers may commit first
            self.store.add_evaluation(spec.key, spec.as_dict(), result, self.run_id, generation)
            self.trained += 1
            if result["status"] in ("failed", "diverged"):
                self.failures += 1
            self.on_event(Event("result", generation or 0, {"spec": spec, "result": result}))
        rows = self.store.evaluations_by_key(list(specs))
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for key, spec in specs.items():
            ev = rows[key]
            row = {"status": ev.status, "valid": ev.valid, "test": ev.test, "baseline": ev.baseline}
            out.setdefault(spec.cell_hash, {}).setdefault(spec.task, []).append(row)
        return out

    def _set_reference(self, rows: dict[str, dict[str, list[dict[str, Any]]]], ref: Cell) -> None:
        for t in self.config.tasks:
            task_rows = rows[ref.hash][t]
            self.reference[t] = task_value(task_rows)
            self.baseline[t] = task_rows[0]["baseline"]

    def _per_task(self, rows: dict[str, list[dict[str, Any]]], reference: dict[str, float | None]) -> dict[str, dict[str, Any]]:
        per_task: dict[str, dict[str, Any]] = {}
        for t in self.config.tasks:
            value = task_value(rows[t])
            metric, higher = self.metric[t]
            base = self.baseline.get(t) if self.baseline.get(t) is not None else rows[t][0]["baseline"]
            per_task[t] = {
                "metric": metric,
                "value": value,
                "relative": round(relative(value, reference.get(t), base, higher), 6),
                "status": sorted({r["status"] for r in rows[t]}),
            }
        return per_task

    def _individual(self, cell: Cell, rows: dict[str, list[dict[str, Any]]]) -> Any:
        per_task = self._per_task(rows, self.reference)
        return self._wrap(cell, cell_score(per_task), per_task)

    def _wrap(self, cell: Cell, score: float, per_task: dict[str, Any]) -> Any:
        ind = self.Individual([cell])
        params, _ = cell_size(cell, self.hp["hidden"])
        ind.fitness.values = (score,) if self.config.selection == "single" else (score, float(params))
        ind.per_task = per_task
        ind.params = params
        return ind

    def _evaluate_individuals(self, cells: Sequence[Cell], generation: int, ref: Cell) -> list[Any]:
        todo = list(cells) if any(c.hash == ref.hash for c in cells) else [*cells, ref]
        rows = self._evaluate(todo, generation)
        self._set_reference(rows, ref)
        return [self._individual(c, rows[c.hash]) for c in cells]

    # ---- variation and selection ------------------------------------------------------------

    def _seed_population(self, rng: np.random.Generator) -> list[Cell]:
        cells: list[Cell] = []
        for cell in self.config.load_seed_cells():
            if cell.hash not in {c.hash for c in cells}:
                cells.append(cell)
        tries = 0
        while len(cells) < self.config.population and tries < 100 * self.config.population:
            tries += 1
            cand = random_cell(rng, name="random")
            if cand.hash not in {c.hash for c in cells}:
                cells.append(cand)
        return cells[: max(self.config.population, len(self.config.seed_cells))]

    def _tournament(self, pop: Sequence[Any], rng: np.random.Generator) -> Any:
        k = min(self.config.tournament, len(pop))
        picks = sorted(int(i) for i in rng.choice(len(pop), size=k, replace=False))
        if self.config.selection == "single":
            return max((pop[i] for i in picks), key=lambda ind: ind.fitness.values[0])  # first of equals wins
        rank = {}
        for r, front in enumerate(tools.sortNondominated(list(pop), len(pop))):
            tools.emo.assignCrowdingDist(front)
            for ind in front:
                rank[id(ind)] = r
        return min((pop[i] for i in picks), key=lambda ind: (rank[id(ind)], -ind.fitness.crowding_dist))

    def _breed(self, pop: Sequence[Any], rng: np.random.Generator) -> list[tuple[Cell, list[str], str]]:
        from .operators import crossover, mutate

        seen = {ind[0].hash for ind in pop}
        children: list[tuple[Cell, list[str], str]] = []
        tries = 0
        while len(children) < self.config.population and tries < 50 * self.config.population:
            tries += 1
            if len(pop) > 1 and rng.random() < self.config.crossover:
                a = self._tournament(pop, rng)
                b = self._tournament(pop, rng)
                if a[0].hash == b[0].hash:
                    continue
                made = crossover(a[0], b[0], rng)
                if made is None:
                    continue
                child, op = made
                parents = [a[0].hash, b[0].hash]
            else:
                a = self._tournament(pop, rng)
                child, op = mutate(a[0], rng)
                parents = [a[0].hash]
            if child.hash in seen:
                continue
            seen.add(child.hash)
            children.append((child.with_name("evolved"), parents, op))
        return children

    def _select(self, candidates: list[Any]) -> list[Any]:
        if self.config.selection == "single":
            return list(tools.selBest(candidates, self.config.population))
        return list(tools.selNSGA2(candidates, self.config.population))

    # ---- the run ----------------------------------------------------------------------------

    def _finish(self, generation: int, pop: list[Any], rng: np.random.Generator, nevals: int, seconds: float) -> None:
        self.hof.update(pop)
        record = self.stats.compile(pop)
        best = max(pop, key=lambda ind: ind.fitness.values[0])
        record = {k: float(v) for k, v in record.items()}
        record.update(gen=generation, nevals=nevals, best=best[0].hash)
        self.logbook.record(**record)
        members = [(ind[0].hash, float(ind.fitness.values[0]), int(ind.params), ind.per_task) for ind in pop]
        self.store.finish_generation(self.run_id, generation, members, record, dict(rng.bit_generator.state), seconds)
        self.on_event(Event("generation_done", generation, {"record": record, "best": best}))

    def _restore(self, generation: int) -> list[Any]:
        """Population of a finished generation, and the hall of fame and logbook up to it."""
        for row in self.store.logbook(self.run_id):
            self.logbook.record(**row.record)
        hashes: list[str] = []
        per_gen: list[list[Any]] = []
        for g in range(generation + 1):
            members = self.store.population(self.run_id, g)
            per_gen.append(members)
            hashes += [m.cell_hash for m in members]
        texts = self.store.cell_texts(hashes)
        cells = {h: parse(t, name=zoo.BY_HASH.get(h, "evolved")) for h, t in texts.items()}
        pop: list[Any] = []
        for members in per_gen:
            inds = [self._wrap(cells[m.cell_hash], m.score, m.scores) for m in members]
            self.hof.update(inds)
            pop = inds
        return pop

    def _confirm(self, ref: Cell) -> dict[str, Any]:
        """Retrain the best evolved cells and the seed cells on held-out training seeds (those the
        search never selected on) and score them again: a search over noisy results rewards luck."""
        top, trials = self.config.confirm_top, self.config.confirm_trials
        if top == 0:
            return {}
        ranked = sorted(self.hof, key=lambda ind: -ind.fitness.values[0])
        evolved = [ind[0] for ind in ranked if zoo.name_of(ind[0]) is None][:top]
        cells: list[Cell] = []
        for c in [*evolved, *self.config.load_seed_cells(), ref]:
            if c.hash not in {d.hash for d in cells}:
                cells.append(c)
        seeds = list(range(self.config.trials, self.config.trials + trials))
        self.on_event(Event("confirm", 0, {"cells": len(cells), "seeds": seeds}))
        rows = self._evaluate(cells, None, seeds)
        reference = {t: task_value(rows[ref.hash][t]) for t in self.config.tasks}
        out: dict[str, Any] = {}
        for c in cells:
            per_task = self._per_task(rows[c.hash], reference)
            out[c.hash] = {"score": cell_score(per_task), "per_task": per_task}
        return {"seeds": seeds, "cells": out}

    def run(self, generations: int) -> list[Any]:
        """Run (or go on with) generations 0..``generations``; the final population."""
        row = self.store.run_by_id(self.run_id)
        done, spent = row.generation, row.seconds
        t0 = time.perf_counter()
        ref = zoo.get(REFERENCE)
        self.store.update_run(self.run_id, status="running", finished=None)
        try:
            if done == 0:
                rng = np.random.default_rng(self.config.seed)
                self.on_event(Event("generation", 0, {"of": generations}))
                cells = self._seed_population(rng)
                pop = self._evaluate_individuals(cells, 0, ref)
                self._finish(0, pop, rng, self.trained, spent + time.perf_counter() - t0)
                done = 1
            else:
                rng = np.random.default_rng()
                assert row.rng_state is not None, "a finished generation always stores the RNG state"
                rng.bit_generator.state = dict(row.rng_state)
                pop = self._restore(done - 1)
            for g in range(done, generations + 1):
                self.on_event(Event("generation", g, {"of": generations}))
                before = self.trained
                children = self._breed(pop, rng)
                self.store.add_cells([c for c, _, _ in children])
                self.store.add_lineage(self.run_id, g, [(c.hash, p, op) for c, parents, op in children for p in parents])
                offspring = self._evaluate_individuals([c for c, _, _ in children], g, ref)
                pop = self._select(pop + offspring)
                self._finish(g, pop, rng, self.trained - before, spent + time.perf_counter() - t0)
            if done <= generations or not row.summary:  # the confirmation, once the last generation is in
                self.store.update_run(self.run_id, summary={"confirmed": self._confirm(ref)})
        except BaseException as err:  # KeyboardInterrupt included: the run can be resumed
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            self.store.update_run(
                self.run_id, status=status, message=f"{type(err).__name__}: {err}"[:500], seconds=spent + time.perf_counter() - t0
            )
            raise
        self.store.update_run(
            self.run_id, status="done", finished=time.time(), message="", seconds=spent + time.perf_counter() - t0
        )
        return pop
