"""Benchmark: start-up time of ``import mechattr`` and ``mechattr --help``, before and after.

Each command runs in a fresh interpreter under ``python -X importtime``; the figures are
the wall-clock time of the whole process (best of ``--reps``), the import time Python
reports for the top-level imports (the sum of their cumulative µs), and which heavy
libraries (torch, TransformerLens, transformers, pandas, plotly, scipy) were imported.
``--before REF`` also measures the source tree of git revision ``REF`` (exported with
``git archive`` to a temporary directory and put first on ``PYTHONPATH``), so both columns
come from the same machine and the same run.

Usage: python scripts/bench_startup.py [--before REF] [--reps 5] [--write]
``--write`` replaces the measured table in benchmarks/startup.md (between the
``<!-- table -->`` markers) and keeps the hand-written text around it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformer_lens", "transformers", "pandas", "plotly", "scipy")
COMMANDS = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "import mechattr": "import mechattr",
    "mechattr --help": "import sys; from mechattr.cli import main; sys.argv = ['mechattr', '--help']; main()",
    "mechattr attribute --help": (
        "import sys; from mechattr.cli import main; sys.argv = ['mechattr', 'attribute', '--help']; main()"),
}


def run_once(code: str, src: Path | None) -> tuple[float, str]:
    """(wall seconds, stderr with the -X importtime lines) of one fresh interpreter."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, cwd=tempfile.gettempdir(),
                           capture_output=True, text=True, timeout=300)
    except SystemExit:  # pragma: no cover
        raise
    wall = time.perf_counter() - t0
    if p.returncode not in (0,):
        raise RuntimeError(f"{code!r} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return wall, p.stderr


def parse_importtime(stderr: str) -> tuple[float, set[str]]:
    """(seconds of the top-level imports' cumulative time, top-level package names imported)."""
    total_us, mods = 0, set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        mods.add(m.group(4).split(".")[0])
        if len(m.group(3)) == 1:  # a top-level import of the command (not a nested one)
            total_us += int(m.group(2))
    return total_us / 1e6, mods


def measure(src: Path | None, reps: int, skip_python: bool = False) -> dict[str, dict]:
    out = {}
    for name, code in COMMANDS.items():
        if skip_python and name in ("python -c pass", "import torch"):
            continue
        walls, imp, mods = [], [], set()
        for _ in range(reps):
            w, err = run_once(code, src)
            t, mods = parse_importtime(err)
            walls.append(w)
            imp.append(t)
        out[name] = {"wall": min(walls), "import": min(imp), "heavy": [h for h in HEAVY if h in mods]}
    return out


def export(ref: str, into: Path) -> Path:
    """The ``mechattr`` package of git revision ``ref`` written under ``into``."""
    tar = into / "src.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "archive", ref, "mechattr"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into


def table(after: dict, before: dict | None, ref: str | None) -> str:
    head = "| command | " + (f"before ({ref}): wall / import | heavy imported | " if before else "")
    head += "after: wall / import | heavy imported |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, a in after.items():
        row = f"| `{name}` | "
        if before:
            b = before.get(name)
            row += (f"{b['wall']:.2f} s / {b['import']:.2f} s | {', '.join(b['heavy']) or '—'} | " if b
                    else "(not measured) | | ")
        row += f"{a['wall']:.2f} s / {a['import']:.2f} s | {', '.join(a['heavy']) or '—'} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None, help="git revision to measure as 'before' (default: none)")
    ap.add_argument("--reps", type=int, default=5, help="runs per command; the best is reported (default 5)")
    ap.add_argument("--write", action="store_true", help="replace the table in benchmarks/startup.md")
    a = ap.parse_args()
    before = None
    if a.before:
        with tempfile.TemporaryDirectory() as d:
            before = measure(export(a.before, Path(d)), a.reps, skip_python=True)
    after = measure(None, a.reps)
    import torch

    try:
        import transformer_lens  # noqa: F401

        from mechattr.io import versions

        v = versions()
    except Exception:  # pragma: no cover
        v = {"torch": torch.__version__}
    meta = (f"Measured {dt.date.today()} on {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, torch {v.get('torch')}, transformer-lens {v.get('transformer_lens', v.get('transformer-lens'))}; "
            f"best of {a.reps} fresh interpreters (`python -X importtime -c ...`). wall = whole process; "
            f"import = sum of the top-level imports' cumulative `-X importtime` figures.")
    text = table(after, before, a.before) + "\n\n" + meta
    print(text)
    if a.write:
        path = ROOT / "benchmarks" / "startup.md"
        doc = path.read_text()
        new = re.sub(r"<!-- table -->.*<!-- /table -->", lambda _: f"<!-- table -->\n{text}\n<!-- /table -->", doc, flags=re.S)
        path.write_text(new)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
