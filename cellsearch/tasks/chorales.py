"""Chorales: next-step prediction on piano rolls of music21's bundled Bach chorales (the JSB stand-in).

STUDIES.md §4 ("JSB", "music21 Bach", "Piano-roll recipe"). Needs ``pip install music21`` to build
the rolls (the corpus ships inside the package; nothing is downloaded) and, unless
``$CELLSEARCH_CACHE_DIR`` is set, ``pip install platformdirs`` to find the cache folder.

Data. The chorales are ``music21.corpus.chorales.Iterator(returnType="filename")`` in its
(Riemenschneider) order with repeated names dropped, each read from its own MusicXML file (350 in
music21 10.5), and only scores of exactly four parts kept: 332 (18 add instrumental parts such as
trumpets, horns or continuo). ``max_chorales`` keeps the first N of those (0 keeps all). Each is
parsed from source (music21's own pickle cache is neither read nor written) and turned into a piano
roll of ``K = 88`` keys, MIDI 21–108:

- every note of ``score.flatten().notes`` counts, a chord as each of its pitches, all four parts
  together (chord symbols and pitches outside the 88 keys are skipped);
- time runs in quarter-note steps from the start of the score; step ``t`` is the instant ``t``
  quarters in, and a note sounds on step ``t`` when ``offset ≤ t < offset + quarterLength``, so it
  covers ``ceil(offset) … ceil(offset + quarterLength) − 1`` (notes shorter than a quarter between
  two beats fall through the grid, as in a quarter-note JSB);
- ``roll[t, midi − 21] = 1`` for every sounding note; a chorale has ``L`` = the last step any note
  covers + 1 steps (no transposition to a common key).

The full set: 332 chorales of 24–193 steps, 17,838 steps in all, MIDI 36–81, at most 4 keys at
once (166 steps where all voices rest).

Sequences. ``x[t] = roll[t]`` and ``y[t] = roll[t + 1]`` for ``t < L − 1``, both float32
``[T, B, 88]``; a batch holds whole chorales drawn uniformly with replacement from the split,
padded at the end with zeros up to its longest ``L − 1`` with ``mask`` 0 there. Loss: binary
cross-entropy summed over the 88 keys, averaged over counted steps, in nats per step; the metric
``nll`` is that same number (lower is better); ``accuracy`` is the per-key thresholded hit rate.

Split: seeded 60/20/20 over the kept chorales (music21 has no standard split):
:func:`~cellsearch.tasks.cache.seeded_split` with ``SPLIT_SEED``: 200 / 66 / 66 chorales (10,183 /
3,805 / 3,518 predicted steps) for the full set, 8 / 2 / 2 for ``max_chorales=12``. A different
``max_chorales`` gives a different split.

Cache. Parsing takes about 0.06 s per chorale (20 s for all), so the rolls are built once and kept
in ``chorales-v1-<all|nN>.npz`` in :func:`~cellsearch.tasks.cache.cache_dir` (written atomically, keyed
by :data:`CACHE_VERSION` and ``max_chorales``; a corrupt or stale file is rebuilt; the music21
version that built it is stored but not checked, so delete the file after a corpus change). The
rolls load on first use (``sample`` or ``baseline``), not at construction, and loading them from
the cache needs no music21. music21 9.1 and 10.5 give the same rolls.

Baseline: independent Bernoullis with the per-key frequency of the training split's targets (every
frame but each chorale's first), smoothed as ``p_k = (n_k + ½) / (N + 1)`` (the
Krichevsky–Trofimov estimate, so a key never heard in training costs finite nats), scored as NLL
per step over all targets of the chosen split; its ``accuracy`` thresholds ``p_k`` at ½. Full
set: 11.32 train, 11.40 valid, 11.50 test (nats per step; accuracy 0.956 on each); for comparison
the czhuang JSB split gives 10.95 valid / 11.06 test, and a uniform ½ gives 88·ln 2 = 61.0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from .base import Batch, Option, Task
from .cache import SPLIT_OPTION, SPLITS, cache_dir, check_installed, load_npz, require, save_npz, seeded_split

__all__ = ["CACHE_VERSION", "KEYS", "LOWEST_MIDI", "SPLIT_SEED", "ChoralesTask", "bernoulli_nll", "piano_roll"]

KEYS = 88
VOICES = 4  # only scores of exactly four parts (SATB) are kept
LOWEST_MIDI = 21  # A0; key k is MIDI 21 + k, up to C8 = 108
SPLIT_SEED = 1
CACHE_VERSION = "chorales-v1 four-part scores, quarter-note grid, 88 keys from MIDI 21"
_EPS = 1e-6  # offsets are exact fractions of a quarter; this only absorbs float rounding (triplets)

_FORMAT_RANK = {".mxl": 0, ".musicxml": 1, ".xml": 1}
Event = tuple[float, float, Iterable[int]]  # (offset, quarterLength, MIDI pitches), in quarters


def piano_roll(events: Iterable[Event]) -> np.ndarray:
    """The ``[L, 88]`` uint8 quarter-note piano roll of ``(offset, quarterLength, midis)`` events.

    A note sounds on step ``t`` when ``offset ≤ t < offset + quarterLength``; ``L`` is one past the
    last step that any note covers (0 when nothing sounds). Pitches outside MIDI 21–108 are skipped.
    """
    spans: list[tuple[int, int, int]] = []
    for offset, length, midis in events:
        start = math.ceil(float(offset) - _EPS)
        end = math.ceil(float(offset) + float(length) - _EPS)
        if end <= start:
            continue
        for midi in midis:
            key = int(midi) - LOWEST_MIDI
            if 0 <= key < KEYS:
                spans.append((max(start, 0), end, key))
    steps = max((end for _, end, _ in spans), default=0)
    roll = np.zeros((steps, KEYS), dtype=np.uint8)
    for start, end, key in spans:
        roll[start:end, key] = 1
    return roll


def bernoulli_nll(p: np.ndarray, frames: np.ndarray) -> float:
    """Mean over ``frames`` ``[F, 88]`` of ``−Σ_k log Bernoulli(frame_k; p_k)``, in nats per step."""
    on = frames.astype(np.float64)
    per_frame = on @ np.log(p) + (1.0 - on) @ np.log1p(-p)
    return float(-per_frame.mean())


def _note_events(score: Any) -> list[Event]:
    events: list[Event] = []
    for element in score.flatten().notes:
        if "Harmony" in element.classes:  # chord symbols are annotations, not sounding notes
            continue
        events.append((float(element.offset), float(element.quarterLength), [p.midi for p in element.pitches]))
    return events


def _corpus_file(corpus: Any, name: str) -> Path:
    """The file of corpus work ``name``: its exact stem, MusicXML first.

    ``corpus.getWork`` matches by prefix, so ``bach/bwv244.3`` also finds ``bwv244.32``, and
    ``bach/bwv281`` finds a Humdrum and a MusicXML copy; ``corpus.parse`` would take the first.
    """
    found = corpus.getWork(name)
    paths = [Path(p) for p in (found if isinstance(found, list) else [found])]
    stem = name.rsplit("/", 1)[-1]
    exact = [p for p in paths if p.stem == stem] or paths
    return min(exact, key=lambda p: (_FORMAT_RANK.get(p.suffix, 9), p.name))


def _build(max_chorales: int) -> dict[str, np.ndarray]:
    """Parse the chorales with music21 and return the arrays that the cache stores."""
    music21 = require("music21", "music21", "chorales")
    corpus = require("music21.corpus", "music21", "chorales")
    converter = require("music21.converter", "music21", "chorales")
    names = list(dict.fromkeys(str(n) for n in corpus.chorales.Iterator(returnType="filename")))
    kept: list[str] = []
    rolls: list[np.ndarray] = []
    for name in names:
        if max_chorales and len(kept) == max_chorales:
            break
        path = _corpus_file(corpus, name)
        score = converter.parse(path, forceSource=True, storePickle=False)
        if len(score.parts) != VOICES:  # a chorale with instrumental parts besides the four voices
            continue
        roll = piano_roll(_note_events(score))
        if len(roll) >= 2:  # one step at least to predict
            kept.append(f"{name.rsplit('/', 1)[0]}/{path.name}")
            rolls.append(roll)
    return {
        "names": np.array(kept, dtype=np.str_),
        "lengths": np.array([len(r) for r in rolls], dtype=np.int64),
        "rolls": np.concatenate(rolls) if rolls else np.zeros((0, KEYS), dtype=np.uint8),
        "music21_version": np.array(str(getattr(music21, "__version__", "unknown"))),  # provenance only
    }


def _valid(arrays: dict[str, np.ndarray], max_chorales: int) -> bool:
    try:
        names, lengths, rolls = arrays["names"], arrays["lengths"], arrays["rolls"]
    except KeyError:
        return False
    return (
        names.ndim == 1
        and lengths.shape == names.shape
        and lengths.dtype.kind == "i"
        and bool(np.all(lengths >= 2))
        and rolls.ndim == 2
        and rolls.shape == (int(lengths.sum()), KEYS)
        and rolls.dtype == np.uint8
        and (max_chorales == 0 or len(names) <= max_chorales)
        and len(names) >= 3
    )


class ChoralesTask(Task):
    name = "chorales"
    loss = "bce"
    metric = "nll"
    higher_is_better = False
    INPUT_KIND = "vector"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "max_chorales": Option(int, 0, 0, 100000, doc="use only the first N chorales (0: all of them)"),
        "split": SPLIT_OPTION,
    }

    max_chorales: int
    split: str

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if 0 < self.max_chorales < 3:
            raise ConfigError(
                f"task '{self.name}': option 'max_chorales' must be 0 (all) or an integer ≥ 3 (got {self.max_chorales!r})"
            )
        self.cache_path = cache_dir(self.name) / self.cache_name
        if not self.cache_path.is_file():
            check_installed("music21", "music21", self.name)
        self._rolls: list[np.ndarray] | None = None
        self._splits: dict[str, np.ndarray] = {}
        self.names: list[str] = []  # the kept chorales' corpus names, filled on first use
        self.loaded_from_cache: bool | None = None  # set on first use: True if the .npz was read

    @property
    def cache_name(self) -> str:
        which = "all" if self.max_chorales == 0 else f"n{self.max_chorales}"
        return f"chorales-v1-{which}.npz"

    @property
    def input_size(self) -> int:
        return KEYS

    @property
    def output_size(self) -> int:
        return KEYS

    # ---- data ---------------------------------------------------------------------------------

    def _load(self) -> list[np.ndarray]:
        if self._rolls is None:
            arrays = load_npz(self.cache_path, CACHE_VERSION)
            self.loaded_from_cache = arrays is not None and _valid(arrays, self.max_chorales)
            if arrays is None or not self.loaded_from_cache:
                arrays = _build(self.max_chorales)
                if not _valid(arrays, self.max_chorales):
                    raise ConfigError(f"task '{self.name}': music21's corpus gave fewer than 3 usable chorales")
                save_npz(self.cache_path, CACHE_VERSION, arrays)
            frames = np.ascontiguousarray(arrays["rolls"])
            frames.setflags(write=False)  # the rolls handed out are views of this one array
            self._rolls = np.split(frames, np.cumsum(arrays["lengths"])[:-1])
            self.names = [str(n) for n in arrays["names"]]
            self._splits = seeded_split(len(self._rolls), SPLIT_SEED)
        return self._rolls

    def _split_index(self, split: str | None) -> np.ndarray:
        self._load()
        split = self.split if split is None else split
        if split not in SPLITS:
            raise ConfigError(f"task '{self.name}': split must be one of {', '.join(map(repr, SPLITS))} (got {split!r})")
        return self._splits[split]

    def chorales(self, split: str | None = None) -> list[np.ndarray]:
        """The read-only ``[L, 88]`` uint8 rolls of ``split`` (default: this task's), in corpus order."""
        rolls = self._load()
        return [rolls[i] for i in self._split_index(split)]

    def split_names(self, split: str | None = None) -> list[str]:
        """The file names (``bach/bwv….mxl``) of the chorales in ``split`` (default: this task's)."""
        return [self.names[i] for i in self._split_index(split)]

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        pool = self.chorales()
        picks = [pool[i] for i in rng.integers(0, len(pool), size=batch_size)]
        T = max(len(r) for r in picks) - 1
        x = np.zeros((T, batch_size, KEYS), dtype=np.float32)
        y = np.zeros((T, batch_size, KEYS), dtype=np.float32)
        mask = np.zeros((T, batch_size), dtype=np.float32)
        for b, roll in enumerate(picks):
            n = len(roll) - 1
            x[:n, b] = roll[:-1]
            y[:n, b] = roll[1:]
            mask[:n, b] = 1.0
        return Batch(x, y, mask)

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, pred: np.ndarray, batch: Batch) -> dict[str, float]:
        out = super().score(pred, batch)
        out["nll"] = out["loss"]
        return out

    def key_probabilities(self) -> np.ndarray:
        """The baseline's ``p_k``: smoothed per-key frequencies of the training split's targets."""
        targets = np.concatenate([r[1:] for r in self.chorales("train")])
        return (targets.sum(axis=0, dtype=np.float64) + 0.5) / (len(targets) + 1.0)

    def baseline(self) -> dict[str, float]:
        p = self.key_probabilities()
        targets = np.concatenate([r[1:] for r in self.chorales()])
        nll = bernoulli_nll(p, targets)
        accuracy = float(np.mean(targets == (p > 0.5)[None, :]))
        return {"loss": nll, "nll": nll, "accuracy": accuracy}
