"""Copy the tables of benchmarks/results/cl_*.json into docs/results.md and README.md.

    python benchmarks/tables.py

Each document holds markers ``<!-- table:NAME -->`` ... ``<!-- /table:NAME -->`` where NAME
is the JSON's stem without ``cl_`` (e.g. split_digits); the text between them is
replaced by that file's measured table, with the machine it ran on. Prose outside the
markers is left alone.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(result: dict) -> str:
    seeds = ", ".join(str(s) for s in result["seeds"])
    extra = f"; overrides: `{' '.join(result['overrides'])}`" if result["overrides"] else ""
    return f"{result['table_markdown']}\n\n_Seeds {seeds}; measured on {result['machine']}{extra}._"


def main() -> None:
    tables = {p.stem[3:]: render(json.loads(p.read_text())) for p in sorted((ROOT / "benchmarks" / "results").glob("cl_*.json"))}
    for doc in (ROOT / "docs" / "results.md", ROOT / "README.md"):
        text = doc.read_text()
        for name, table in tables.items():
            pattern = re.compile(rf"(<!-- table:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- /table:{re.escape(name)} -->)", re.S)
            text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
        doc.write_text(text)
        print(f"updated {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
