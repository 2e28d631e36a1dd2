"""Build eval/general_corpus.en.txt: English prose paragraphs from the Python documentation.

Source: `pydoc_data/topics.py` of CPython 3.11 (the Python Language Reference topics), PSF License v2
(https://docs.python.org/3/license.html), which permits redistribution with this notice. Code blocks and
grammar rules are dropped; prose paragraphs are kept until ~25k tokens. Used for the perplexity-change check:
drift on plain English text that no injected fact touches.
"""

from __future__ import annotations

import re
from pathlib import Path
from pydoc_data.topics import topics

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("# Source: CPython 3.11 documentation (pydoc_data/topics.py), Copyright (c) 2001 Python Software "
          "Foundation; PSF License v2. Prose paragraphs only; built by scripts/build_general_corpus.py.\n")


def paragraphs() -> list[str]:
    out = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            if block.startswith((" ", "\t")) or "::=" in block or "*****" in block or ">>>" in block:
                continue
            text = " ".join(block.split())
            letters = sum(c.isalpha() or c == " " for c in text)
            if len(text) > 200 and letters / len(text) > 0.85:
                out.append(text)
    return out


def main(max_chars: int = 110_000) -> None:
    kept, size = [], 0
    for p in paragraphs():
        if size >= max_chars:
            break
        kept.append(p)
        size += len(p)
    path = ROOT / "eval" / "general_corpus.en.txt"
    path.write_text(HEADER + "\n\n".join(kept) + "\n")
    print(f"{len(kept)} paragraphs, {size} characters -> {path}")


if __name__ == "__main__":
    main()
