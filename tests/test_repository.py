"""The repository stands on its own: it cites no file outside the checkout, and it speaks of the product, not of
how it was made or where its authors' machines came from. Facts it relies on are in its own docs/."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each pattern, and why it has no place in the repository.
FORBIDDEN = {
    r"REFERENCE\.md": "a reference file outside the repository (put the fact in docs/)",
    r"\.\./shared\b|/work/(?:main|shared)\b": "a path outside the checkout",
    r"\blent\b|\bdevice time\b|\bbudget_left": "how the authors got a machine, not what the product does",
    r"\b(?:this|a|each|next|last|previous) (?:work )?session\b(?! fixture)|\bsessions? last\b": (
        "words about the authors' working sessions"),
    r"\bsubagents?\b|\bfarm-(?:bench|studio)\b|\bissues? tool\b": "the authors' tools",
}
SELF = Path(__file__).name


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = [REPO / n for n in names if n != f"tests/{SELF}" and not n.startswith("tests/fixtures/")]
    return [f for f in files if f.is_file() and f.suffix in {".py", ".md", ".sh", ".yaml", ".yml", ".cfg", ".toml",
                                                             ".txt", ""}]


def test_no_file_speaks_of_things_outside_the_repository():
    found = []
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for pattern, why in FORBIDDEN.items():
            for match in re.finditer(pattern, text, flags=re.IGNORECASE):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {match.group(0)!r}: {why}")
    assert not found, "\n".join(found)


def test_the_check_itself_catches_each_kind_of_word():
    # each sample joined from two halves, so that this file never carries the phrases it forbids
    samples = ["see ../sha" + "red/REFERENCE.md", "the GPU we were le" + "nt", "in this ses" + "sion we",
               "ask a sub" + "agent"]
    for sample in samples:
        assert any(re.search(p, sample, flags=re.IGNORECASE) for p in FORBIDDEN), sample
    assert not any(re.search(p, "the tiny_dir fixture of scope " + "session", flags=re.IGNORECASE) for p in FORBIDDEN)
