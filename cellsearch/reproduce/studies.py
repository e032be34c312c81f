"""The two LSTM-optimality studies as data: cells, tasks, hyperparameter spaces and scales.

Greff et al. 2016 ("LSTM: A Search Space Odyssey"): the vanilla peephole LSTM and its eight
one-change variants, each trained with SGD + Nesterov momentum over a random search of hidden size,
learning rate, momentum and input noise. Their datasets were TIMIT, IAM Online and JSB Chorales; we
run the Bach chorales that ship with music21 for JSB, and two tasks that stand in for the two speech
and handwriting sets (``STAND_INS`` says which and why).

Jozefowicz et al. 2015: their LSTM (tanh "output gate"), LSTM-b/-i/-f/-o, their GRU, MUT1-3 and the
tanh RNN on Arithmetic, XML and the chorales (and PTB when its files are given), each over a random
search of their ranges; plus an evolutionary search seeded with LSTM and GRU (``search_config``).

Scales: ``smoke`` (minutes: the pipeline end to end), ``small`` (a 2-core machine in an hour or
two), ``paper`` (the papers' trial counts; budgets closer to theirs, but still far shorter than
their 150-epoch runs). The search spaces at ``smoke``/``small`` move Greff's learning-rate range up
by two decades: our runs are a few hundred to a thousand steps, not 150 epochs, and SGD at 1e-6
learns nothing in that time (Greff's own advice was to start high, at 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

SCALES = ("smoke", "small", "paper")


@dataclass(frozen=True)
class Scale:
    trials: int  # random-search trials per (cell, task)
    hp: dict[str, Any]  # fixed hyperparameters at this scale (budget, evaluation size, ...)
    task_options: dict[str, dict[str, Any]]  # per task, at this scale
    space: dict[str, dict[str, Any]]  # per hyperparameter: its distribution at this scale
    search: dict[str, Any] = field(default_factory=dict)  # the evolutionary search's run config (Jozefowicz)


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    variants: tuple[str, ...]  # zoo names, in display order
    vanilla: str  # the cell every other is compared with
    tasks: tuple[str, ...]
    stand_ins: dict[str, str]
    scales: dict[str, Scale]
    optional_tasks: tuple[str, ...] = ()  # run only when their data is given (PTB)

    def scale(self, name: str) -> Scale:
        if name not in self.scales:
            raise ConfigError(f"unknown scale '{name}' for {self.name} (known: {', '.join(self.scales)})")
        return self.scales[name]


def sample(space: dict[str, dict[str, Any]], rng: np.random.Generator) -> dict[str, Any]:
    """One draw from a search space (keys in sorted order, so the draw does not depend on dict order)."""
    out: dict[str, Any] = {}
    for key in sorted(space):
        d = space[key]
        kind = d["dist"]
        if kind == "loguniform":
            v: Any = float(np.exp(rng.uniform(np.log(d["low"]), np.log(d["high"]))))
        elif kind == "int_loguniform":
            v = round(float(np.exp(rng.uniform(np.log(d["low"]), np.log(d["high"])))))
        elif kind == "uniform":
            v = float(rng.uniform(d["low"], d["high"]))
        elif kind == "one_minus_loguniform":  # Greff's momentum: 1 - logU[low, high]
            v = float(1.0 - np.exp(rng.uniform(np.log(d["low"]), np.log(d["high"]))))
        elif kind == "choice":
            v = d["choices"][int(rng.integers(len(d["choices"])))]
        else:
            raise ConfigError(f"unknown distribution '{kind}' for '{key}'")
        out[key] = round(v, 6) if isinstance(v, float) else v
    return out


# ---- Greff et al. 2016 ----------------------------------------------------------------------------

_GREFF_SPACE_PAPER = {
    "hidden": {"dist": "int_loguniform", "low": 20, "high": 200},
    "lr": {"dist": "loguniform", "low": 1e-6, "high": 1e-2},
    "momentum": {"dist": "one_minus_loguniform", "low": 0.01, "high": 1.0},
    "input_noise": {"dist": "uniform", "low": 0.0, "high": 1.0},
}


def _greff_space(hidden: tuple[int, int]) -> dict[str, dict[str, Any]]:
    return {
        "hidden": {"dist": "int_loguniform", "low": hidden[0], "high": hidden[1]},
        "lr": {"dist": "loguniform", "low": 1e-4, "high": 1.0},
        "momentum": {"dist": "one_minus_loguniform", "low": 0.01, "high": 1.0},
        "input_noise": {"dist": "uniform", "low": 0.0, "high": 1.0},
    }


_GREFF_FIXED = {"optimizer": "sgd", "clip": 0.0, "batch": 16}  # Greff: SGD + Nesterov momentum, no clipping

GREFF = Study(
    name="greff2016",
    title="Greff et al. 2016, LSTM: A Search Space Odyssey",
    variants=("lstm_peephole", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"),
    vanilla="lstm_peephole",
    tasks=("chorales", "digits", "copy"),
    stand_ins={
        "chorales": "JSB Chorales: music21's 332 four-part Bach chorales as 88-key piano rolls, per-step "
        "Bernoulli NLL (the same kind of data and metric as JSB; not the same split)",
        "digits": "TIMIT (framewise classification of real recorded signals): scikit-learn's 8x8 "
        "handwritten digits read row by row, classified from the sequence — a small real-data "
        "sequence classification task; no speech corpus ships with any package here",
        "copy": "IAM Online (transcribing a pen trajectory into characters): the copy task — read a "
        "symbol sequence, keep it across a delay, then write it out symbol by symbol; like "
        "transcription it needs the gates to store and release symbols on cue",
    },
    scales={
        "smoke": Scale(
            trials=2,
            hp={**_GREFF_FIXED, "steps": 60, "eval_every": 30, "eval_size": 64, "time_budget": 60.0},
            task_options={"chorales": {"max_chorales": 24}, "digits": {"mode": "rows"}, "copy": {"length": 5, "n": 3}},
            space=_greff_space((8, 24)),
        ),
        "small": Scale(
            trials=16,
            hp={**_GREFF_FIXED, "steps": 500, "eval_every": 100, "eval_size": 256, "time_budget": 120.0},
            task_options={"chorales": {"max_chorales": 0}, "digits": {"mode": "rows"}, "copy": {"length": 10, "n": 5}},
            space=_greff_space((16, 64)),
        ),
        "paper": Scale(
            trials=200,
            hp={**_GREFF_FIXED, "steps": 20000, "eval_every": 500, "eval_size": 512, "patience": 10, "time_budget": 0.0},
            task_options={"chorales": {"max_chorales": 0}, "digits": {"mode": "rows"}, "copy": {"length": 50, "n": 10}},
            space=_GREFF_SPACE_PAPER,
        ),
    },
)

# ---- Jozefowicz et al. 2015 -----------------------------------------------------------------------

_JZ_SPACE = {  # their per-candidate grid, as ranges: init scale/sqrt(N), SGD learning rate, clip norm
    "init_scale": {"dist": "uniform", "low": 0.3, "high": 2.8},
    "lr": {"dist": "loguniform", "low": 0.1, "high": 5.0},
    "clip": {"dist": "uniform", "low": 1.0, "high": 20.0},
}
_JZ_FIXED = {"optimizer": "sgd", "momentum": 0.0, "batch": 20}


def _jz_search(population: int, generations: int, hp: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {
        "population": population,
        "generations": generations,
        "tasks": ["arithmetic", "xml"],
        "seed_cells": ["jz_lstm", "gru"],
        "task_options": options,
        "hp": hp,
    }


JOZEFOWICZ = Study(
    name="jozefowicz2015",
    title="Jozefowicz, Zaremba & Sutskever 2015, An Empirical Exploration of Recurrent Network Architectures",
    variants=("jz_lstm", "jz_lstm_b", "jz_lstm_i", "jz_lstm_f", "jz_lstm_o", "gru_jz", "mut1", "mut2", "mut3", "rnn"),
    vanilla="gru_jz",
    tasks=("arithmetic", "xml", "chorales"),
    optional_tasks=("text",),
    stand_ins={
        "chorales": "their music sets (Nottingham, Piano-midi): music21's Bach chorales as piano rolls, per-step NLL",
        "text": "PTB word-level language modelling, from the files given with --ptb",
    },
    scales={
        "smoke": Scale(
            trials=2,
            hp={**_JZ_FIXED, "hidden": 24, "steps": 60, "eval_every": 30, "eval_size": 64, "time_budget": 60.0},
            task_options={"arithmetic": {"digits": 2}, "xml": {}, "chorales": {"max_chorales": 24}, "text": {}},
            space=_JZ_SPACE,
            search=_jz_search(
                4, 1, {"steps": 60, "hidden": 24, "eval_every": 30, "eval_size": 64}, {"arithmetic": {"digits": 2}}
            ),
        ),
        "small": Scale(
            trials=4,
            hp={**_JZ_FIXED, "hidden": 64, "steps": 800, "eval_every": 100, "eval_size": 256, "time_budget": 150.0},
            task_options={"arithmetic": {"digits": 3}, "xml": {}, "chorales": {"max_chorales": 0}, "text": {}},
            space=_JZ_SPACE,
            search=_jz_search(
                6,
                2,
                {"steps": 800, "hidden": 64, "eval_every": 100, "eval_size": 256, "time_budget": 150.0},
                {"arithmetic": {"digits": 3}},
            ),
        ),
        "paper": Scale(
            trials=20,
            hp={**_JZ_FIXED, "hidden": 256, "steps": 20000, "eval_every": 500, "eval_size": 1000, "time_budget": 0.0},
            task_options={"arithmetic": {"digits": 8}, "xml": {}, "chorales": {"max_chorales": 0}, "text": {}},
            space={**_JZ_SPACE, "layers": {"dist": "choice", "choices": [1, 2, 3, 4]}},
            search=_jz_search(100, 50, {"steps": 20000, "hidden": 256, "eval_every": 500}, {"arithmetic": {"digits": 8}}),
        ),
    },
)

STUDIES: dict[str, Study] = {s.name: s for s in (GREFF, JOZEFOWICZ)}


def get(name: str) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"unknown study '{name}' (known: {', '.join(STUDIES)})")
    return STUDIES[name]
