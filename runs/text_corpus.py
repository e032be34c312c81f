"""Write a small PTB-layout corpus for the ``text`` task from English text already on the machine.

The text is Jane Austen's *Lady Susan* (public domain; Project Gutenberg's etext), which music21
ships as language-detection training data (``music21/languageExcerpts/trainingData/en.txt``), so
nothing is downloaded. Gutenberg's first and last lines are dropped; each paragraph becomes one
line, lower-cased, whitespace collapsed (PTB's own files are lower-case too). Paragraphs are split
in order at the paragraph ends nearest 80% and 90% of the characters into ``ptb.train.txt``,
``ptb.valid.txt`` and ``ptb.test.txt`` (about 100k, 13k and 13k characters).

    python runs/text_corpus.py /tmp/lady_susan
    cellsearch eval lstm --task text --task-opt path=/tmp/lady_susan --task-opt level=char ...

The corpus is made on demand and never committed.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from itertools import accumulate
from pathlib import Path


def paragraphs() -> list[str]:
    source = files("music21.languageExcerpts").joinpath("trainingData", "en.txt").read_text(encoding="utf-8")
    lines = [line for line in source.splitlines() if "Project Gutenberg Etext" not in line]
    out: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(" ".join(current).lower().split()))
            current = []
    return out


def main(folder: str) -> None:
    paras = paragraphs()
    ends = list(accumulate(len(p) + 1 for p in paras))
    a, b = (min(range(len(ends)), key=lambda k: abs(ends[k] - share * ends[-1])) + 1 for share in (0.8, 0.9))
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", paras[:a]), ("valid", paras[a:b]), ("test", paras[b:])):
        (target / f"ptb.{split}.txt").write_text("\n".join(part) + "\n", encoding="utf-8")
        print(f"{target / f'ptb.{split}.txt'}: {len(part)} paragraphs, {sum(len(p) + 1 for p in part)} characters")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lady_susan")
