"""The review's claims about LSTM, each as an experiment: which cells, on which task, trained how.

The review the project grew from (``shared/seed/``) makes eight claims a reader can test. Each claim
here names its experiment as data: *arms* (a zoo cell, a task with its options, hyperparameters)
trained over ``seeds`` seeds, or a measurement that needs no training (gradient reach from
``inspect``, parameter count and step time from the kernels). ``claims(scale)`` builds them for a
scale: ``smoke`` runs the whole pipeline in minutes and decides nothing; ``small`` is the smallest
run whose verdicts mean something on a 2-core machine (about an hour). The analysis that turns the
stored evaluations into a verdict lives in :mod:`.analysis`; the verdict rules are in each claim's
``rule`` so the report can print them beside the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

SCALES = ("smoke", "small")


@dataclass(frozen=True)
class Arm:
    """One trained configuration of a claim's experiment."""

    label: str  # how tables name it
    cell: str  # zoo name
    task: str
    options: dict[str, Any] = field(default_factory=dict)  # the task's options (defaults fill the rest)
    hp: dict[str, Any] = field(default_factory=dict)  # hyperparameters (make_hp's defaults fill the rest)


@dataclass(frozen=True)
class Claim:
    number: int
    slug: str
    quote: str  # the review's claim, in short
    experiment: str  # what we run, in words
    rule: str  # how the verdict is decided
    kind: str  # "train" (arms over seeds) | "reach" (inspect's gradient flow) | "cost" (parameters and step time)
    arms: tuple[Arm, ...] = ()
    seeds: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # a measurement's settings (kind "reach"/"cost")

    @property
    def cells(self) -> list[str]:
        """The cells the claim compares, in order, each once."""
        names = [a.cell for a in self.arms] if self.arms else list(self.settings.get("cells", ()))
        return list(dict.fromkeys(names))


#: the SLIM variants the zoo holds (Akandeh & Salem's numbering, see each .cell file)
SLIMS = ("slim1", "slim2", "slim3", "slim4", "slim5")

_BUDGET = {  # per scale: training steps of a typical arm, evaluation cadence and size, seeds
    "smoke": {"steps": 120, "eval_every": 40, "eval_size": 64, "seeds": 2, "long_steps": 150},
    "small": {"steps": 1500, "eval_every": 100, "eval_size": 256, "seeds": 5, "long_steps": 3000},
}


def _hp(scale: str, **values: Any) -> dict[str, Any]:
    b = _BUDGET[scale]
    base = {"steps": b["steps"], "eval_every": b["eval_every"], "eval_size": b["eval_size"], "patience": 100}
    return {**base, **values}


def model_params(cell: str, task: str, options: dict[str, Any], hp: dict[str, Any]) -> int:
    """Parameters of the whole model (encoder, cell layers, head) an arm trains."""
    import numpy as np

    from .. import zoo
    from ..model import Model
    from ..tasks import make_task
    from ..train.loop import make_hp

    h = make_hp(**hp)
    model = Model(zoo.get(cell), make_task(task, **options), h.hidden, h.embed or None, "reference", np.float64,
                  h.layers, h.bidirectional)  # fmt: skip
    return int(sum(v.size for v in model.init(np.random.default_rng(0)).values()))


def equal_params_hidden(cell: str, task: str, options: dict[str, Any], hp: dict[str, Any]) -> int:
    """The hidden size of a one-directional model with (about) the parameters of the bidirectional
    one ``hp`` describes (same encoder width ``hp["embed"]``)."""
    target = model_params(cell, task, options, hp)
    uni = {**hp, "bidirectional": False}
    return min(
        range(1, 4 * hp["hidden"] + 1), key=lambda n: abs(model_params(cell, task, options, {**uni, "hidden": n}) - target)
    )


def claims(scale: str) -> list[Claim]:
    """The eight claims' experiments at ``scale`` (``smoke`` | ``small``)."""
    if scale not in _BUDGET:
        raise ConfigError(f"unknown scale '{scale}' for claims (known: {', '.join(SCALES)})")
    b = _BUDGET[scale]
    seeds = b["seeds"]
    small = scale == "small"
    lag = 1000
    recall = {"lag": lag, "symbols": 4}
    recall_hp = _hp(scale, hidden=16, batch=16, lr=1e-2, gate_init="chrono", steps=b["long_steps"], time_budget=0.0)
    adding = {"length": 100}
    clip_hp = _hp(scale, hidden=32, batch=20, optimizer="sgd", momentum=0.0, lr=0.05, init_scale=2.5)
    tagging: dict[str, Any] = {}
    bi_h = 16
    bi_hp = _hp(scale, hidden=bi_h, embed=bi_h, bidirectional=True, lr=1e-2)
    uni_h = equal_params_hidden("lstm", "tagging", tagging, bi_hp)
    timing: dict[str, Any] = {}
    digits_hp = _hp(scale, hidden=32, batch=32, lr=1e-2)
    slim_cells = ("lstm", *SLIMS)
    return [
        Claim(
            1,
            "long-lags",
            "LSTM bridges time lags beyond 1000 steps where a tanh RNN fails",
            f"delayed recall, lag {lag}, 4 symbols (chance 0.25), H=16, Adam, chrono initialisation of the keep gates",
            "supported when LSTM's test accuracy is significantly above the RNN's (Welch, p<0.05) and reaches 0.9; "
            "not supported when the RNN does as well; inconclusive when LSTM does not learn it at this budget",
            "train",
            tuple(Arm(c, c, "delayed_recall", recall, recall_hp) for c in ("lstm", "rnn", "gru")),
            seeds,
        ),
        Claim(
            2,
            "vanishing-gradients",
            "gradients vanish in a tanh RNN and flow through the LSTM's cell",
            "inspect's gradient flow at initialisation on delayed recall (lag 200): |dL/ds_(t-k)| against the lag k, "
            "LSTM and GRU with forget bias 1 and with chrono initialisation, the RNN as it starts",
            "supported when the RNN's gradient at lag 200 is below 1e-3 of its lag-0 value and the LSTM's "
            "(chrono) stays above 1e-2 of it",
            "reach",
            settings={
                "task": "delayed_recall",
                "options": {"lag": 200, "symbols": 8},
                "cells": ["rnn", "lstm", "gru"],
                "inits": {
                    "rnn": [{}],
                    "lstm": [{"forget_bias": 1.0}, {"gate_init": "chrono"}],
                    "gru": [{"forget_bias": 1.0}, {"gate_init": "chrono"}],
                },
                "hp": {"hidden": 32, "batch": 16 if small else 8},
                "seeds": 3 if small else 1,
            },
        ),
        Claim(
            3,
            "clipping",
            "gradient clipping prevents divergence from exploding gradients",
            f"adding problem (T={adding['length']}), tanh RNN with a large recurrent initialisation (scale 2.5), "
            "plain SGD at lr 0.05, global-norm clipping at 1 against none",
            "supported when more runs diverge without clipping than with it, or (none diverging) the clipped runs "
            "end with a significantly lower test MSE; inconclusive when neither differs",
            "train",
            (
                Arm("rnn, clip 1", "rnn", "adding", adding, {**clip_hp, "clip": 1.0}),
                Arm("rnn, no clipping", "rnn", "adding", adding, {**clip_hp, "clip": 0.0}),
            ),
            seeds + (3 if small else 1),
        ),
        Claim(
            4,
            "bidirectional",
            "a BiLSTM beats a one-directional LSTM of equal parameter count when labels need the future",
            f"tagging (each label needs the symbols before and after it), BiLSTM H={bi_h} per direction against "
            f"LSTM H={uni_h} (about the same parameters; both embed the symbols in {bi_h} dimensions)",
            "supported when the BiLSTM's test accuracy is significantly higher (Welch, p<0.05); not supported when "
            "it is significantly lower or the 95% confidence interval of the difference excludes a gain of 0.05; "
            "inconclusive otherwise (or when neither learns the task)",
            "train",
            (
                Arm(f"BiLSTM H={bi_h}", "lstm", "tagging", tagging, bi_hp),
                Arm(f"LSTM H={uni_h}", "lstm", "tagging", tagging, {**bi_hp, "hidden": uni_h, "bidirectional": False}),
            ),
            seeds,
        ),
        Claim(
            5,
            "peepholes",
            "peephole connections help an LSTM learn precise timing",
            "timing (reproduce the interval between two input spikes with an output spike at exactly the right step), "
            "lstm_peephole against the same LSTM without peepholes (Greff's NP), H=16",
            "supported when the peephole LSTM's exact-timing accuracy is significantly higher (Welch, p<0.05); not "
            "supported when it is significantly lower or the 95% confidence interval of the difference excludes a "
            "gain of 0.05; inconclusive otherwise (or when neither learns the task)",
            "train",
            tuple(Arm(c, c, "timing", timing, _hp(scale, hidden=16, lr=1e-2)) for c in ("lstm_peephole", "np")),
            seeds,
        ),
        Claim(
            6,
            "slim",
            "simplified gating (SLIM LSTMs) keeps the accuracy with fewer parameters",
            "sequential digits (8 rows of 8 pixels) and the adding problem (T=50), LSTM and SLIM1-5, H=32, Adam",
            "per variant and task: keeps when not significantly worse than LSTM (Welch, p<0.05) and within 5% of "
            "its result (accuracy; MSE as log skill over the mean predictor); supported when every variant keeps on "
            "every task, not supported when none does anywhere, partly supported otherwise",
            "train",
            tuple(Arm(c, c, "digits", {}, digits_hp) for c in slim_cells)
            + tuple(Arm(c, c, "adding", {"length": 50}, _hp(scale, hidden=32, batch=32, lr=1e-2)) for c in slim_cells),
            seeds,
        ),
        Claim(
            7,
            "forecasting",
            "LSTMs forecast time series better than the persistence baseline",
            "next-step forecasting of Mackey-Glass (tau=17) and of the yearly sunspot numbers (chronological split), "
            "LSTM H=32; normalised RMSE against persistence and the training mean on the same test windows",
            "supported on a series when LSTM's test NRMSE is significantly below persistence's (Welch, p<0.05)",
            "train",
            (
                Arm("lstm", "lstm", "mackey_glass", {"washout": 300}, _hp(scale, hidden=32, batch=32, lr=1e-2)),
                Arm("lstm", "lstm", "sunspots", {}, _hp(scale, hidden=32, batch=32, lr=1e-2)),
            ),
            seeds,
        ),
        Claim(
            8,
            "gate-cost",
            "the gates cost parameters and time",
            "parameters at (input 8, H 64) and the measured time of one training step (forward and BPTT, all "
            "gradients) at (batch 32, length 100, input 8, H 64) on the cpu backend, one thread, per cell",
            "supported when LSTM has the most parameters and the slowest step of LSTM, GRU and RNN, in that order, "
            "and every SLIM variant has fewer parameters than LSTM",
            "cost",
            settings={
                "cells": ["lstm", "gru", "rnn", *SLIMS],
                "config": [32, 100, 8, 64],
                "rounds": 15 if small else 5,
            },
        ),
    ]
