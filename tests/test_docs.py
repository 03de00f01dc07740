"""The docs run: every fenced ``python`` and ``bash`` block of README.md and docs/*.md is
executed (offline, in a temporary directory), and the docs refer only to files that exist.

How a doc is run
----------------
* The ``python`` blocks of one file run in order in one namespace (a later block may use
  what an earlier one defined), in-process, in a fresh temporary working directory.
* ``bash`` blocks run command by command: a ``mechattr ...`` (or ``.venv/bin/mechattr ...``)
  command runs in-process through :func:`mechattr.cli.main` with the same arguments (an
  interpreter start per command would cost seconds each); any other command runs in
  ``bash`` with the virtual environment's ``bin`` first on ``PATH`` (and ``.venv`` linked
  into the working directory, so ``source .venv/bin/activate`` works). A non-zero exit
  fails the doc.
* Every fence needs a language: ``python`` and ``bash`` are run; anything else (``text``,
  ``json``, ...) is shown only.

Directives (HTML comments, invisible on GitHub) on the lines right before a fence:

* ``<!-- docs-test: skip: WHY -->`` — the block is not run; WHY is required (e.g. it needs
  the network or a GPU, or it is the whole test suite).
* ``<!-- docs-test: hooked-only: WHY -->`` — run only where TransformerLens has
  ``HookedTransformer`` (3.x); on TransformerLens 4 the block is skipped, saying WHY.
* ``<!-- docs-test: replace OLD => NEW -->`` — before running, OLD is replaced by NEW in the
  block (repeatable, applied in order; each OLD must occur). Used to run the docs' examples
  at test size (fewer steps or examples) and to point placeholders at test fixtures.
  ``{tiny_hf_dir}`` in NEW is a tiny random GPT-2 saved with ``save_pretrained`` (word-level
  tokenizer: ``w0`` ... ``w39``, see ``tests/conftest.py``).

:func:`run_doc` is the collector; ``test_broken_block_fails_the_collector`` checks that it
fails on a deliberately broken block.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mechattr.runtime.tl import HAS_HOOKED

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "bash")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->", re.S)


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None = None
    hooked_only: str | None = None
    replace: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` with their directives (the comments right before each)."""
    text = path.read_text()
    out, prev_end = [], 0
    for m in FENCE.finditer(text):
        lang = m.group(1).strip().split()[0] if m.group(1).strip() else ""
        b = Block(path, text[: m.start()].count("\n") + 1, lang, m.group(2))
        gap = text[prev_end: m.start()]
        # directives: the comments in the run of comment/blank lines right before the fence
        tail = re.search(r"((?:[ \t]*<!--.*?-->[ \t]*\n|[ \t]*\n)*)\Z", gap, re.S)
        for d in DIRECTIVE.findall(tail.group(1) if tail else ""):
            if d.startswith("skip:") and d[5:].strip():
                b.skip = d[5:].strip()
            elif d.startswith("hooked-only:") and d[12:].strip():
                b.hooked_only = d[12:].strip()
            elif d.startswith("replace ") and " => " in d:
                old, new = d[len("replace "):].split(" => ", 1)
                b.replace.append((old, new))
            else:
                raise ValueError(f"{b.where}: bad docs-test directive {d!r} "
                                 f"(skip: WHY | hooked-only: WHY | replace OLD => NEW)")
        out.append(b)
        prev_end = m.end()
    return out


def _apply(b: Block, subs: dict[str, str]) -> str:
    code = b.code
    for old, new in b.replace:
        if old not in code:
            raise ValueError(f"{b.where}: docs-test replace: {old!r} is not in the block")
        for key, value in subs.items():  # placeholders only: NEW may hold other braces
            new = new.replace("{" + key + "}", value)
        code = code.replace(old, new)
    return code


def _commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [c for c in (ln.strip() for ln in joined.splitlines()) if c and not c.startswith("#")]


def _run_bash(cmd: str, cwd: Path) -> None:
    from mechattr.cli import main

    words = shlex.split(cmd, comments=True)
    if words and words[0] in ("mechattr", ".venv/bin/mechattr"):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                rc = main(words[1:])
        except SystemExit as done:  # --help
            rc = done.code or 0
        if rc != 0:
            raise RuntimeError(f"`{cmd}` exited with {rc}: {err.getvalue()[-2000:]}")
        return
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"`{cmd}` exited with {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def run_doc(path: Path, cwd: Path, subs: dict[str, str]) -> list[str]:
    """Run every python/bash block of ``path`` in ``cwd``; returns what ran (``file:line lang``)
    or the skips. Raises ``AssertionError`` naming the block and the error when one fails, or
    when a fence has no language."""
    ns: dict = {"__name__": "__docs__"}
    ran = []
    old = Path.cwd()
    venv = cwd / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
    os.chdir(cwd)
    try:
        for b in blocks(path):
            if not b.lang:
                raise AssertionError(f"{b.where}: fence without a language (python, bash, text, ...)")
            if b.lang not in RUN:
                continue
            if b.skip or (b.hooked_only and not HAS_HOOKED):
                ran.append(f"{b.where} {b.lang} skipped: {b.skip or b.hooked_only}")
                continue
            try:
                code = _apply(b, subs)
            except ValueError as err:
                raise AssertionError(str(err)) from None
            try:
                if b.lang == "python":
                    exec(compile(code, f"<{b.where}>", "exec"), ns)
                else:
                    for cmd in _commands(code):
                        _run_bash(cmd, cwd)
            except BaseException as err:  # noqa: BLE001 (SystemExit from argparse too)
                tb = "".join(traceback.format_exception(err)[-6:])
                raise AssertionError(f"{b.where} ({b.lang} block) failed:\n{code}\n---\n{tb}") from None
            ran.append(f"{b.where} {b.lang}")
    finally:
        os.chdir(old)
    return ran


@pytest.fixture(scope="module")
def subs(tiny_hf_dir):
    return {"tiny_hf_dir": str(tiny_hf_dir)}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_doc_blocks_run(doc, subs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run_doc(doc, tmp_path, subs)


def test_broken_block_fails_the_collector(tmp_path, subs):
    doc = tmp_path / "broken.md"
    doc.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'broken on purpose'\n```\n")
    with pytest.raises(AssertionError, match=r"broken.md:9 \(python block\) failed(.|\n)*broken on purpose"):
        run_doc(doc, tmp_path, subs)
    bad_cli = tmp_path / "cli.md"
    bad_cli.write_text("```bash\nmechattr attribute organism:induction 't5 t9' --method magic\n```\n")
    with pytest.raises(AssertionError, match="exited with 2"):
        run_doc(bad_cli, tmp_path, subs)
    bad_sh = tmp_path / "sh.md"
    bad_sh.write_text("```bash\ntrue\nfalse\n```\n")
    with pytest.raises(AssertionError, match="`false` exited with 1"):
        run_doc(bad_sh, tmp_path, subs)


def test_collector_honours_skip_and_replace_and_wants_languages(tmp_path, subs):
    doc = tmp_path / "d.md"
    doc.write_text("<!-- docs-test: skip: needs the network -->\n```bash\nfalse\n```\n\n"
                   "<!-- docs-test: replace 1 + 1 => 2 + 2 -->\n```python\nv = 1 + 1\nassert v == 4\n```\n"
                   "```text\nnot run\n```\n")
    assert run_doc(doc, tmp_path, subs) == [f"{doc}:2 bash skipped: needs the network", f"{doc}:7 python"]
    (tmp_path / "e.md").write_text("```\nls\n```\n")
    with pytest.raises(AssertionError, match="fence without a language"):
        run_doc(tmp_path / "e.md", tmp_path, subs)
    (tmp_path / "f.md").write_text("<!-- docs-test: replace absent => x -->\n```python\npass\n```\n")
    with pytest.raises(AssertionError, match="'absent' is not in the block"):
        run_doc(tmp_path / "f.md", tmp_path, subs)


# ----------------------------------------------------------------------------- references
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PATHLIKE = re.compile(r"`((?:mechattr|scripts|tests|benchmarks|docs|analyses)/[\w./-]*\w)`")
SOURCE_FILE = re.compile(r"`([\w.-]+(?:/[\w.-]+)+\.(?:py|md|sh|toml))`")  # e.g. `runtime/blocks.py`
LOCAL_PAPER = re.compile(r"\bpaper \d{3}\b")  # a private file number instead of a citation


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_doc_refers_only_to_files_in_the_repository(doc):
    text = doc.read_text()
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    for p in PATHLIKE.findall(text):
        base = p.split("::")[0]
        if not ((ROOT / base).exists() or list(ROOT.glob(base))):
            missing.append(p)
    for p in SOURCE_FILE.findall(text):
        if not ((ROOT / p).exists() or (ROOT / "mechattr" / p).exists()):
            missing.append(p)
    assert not missing, f"{doc.name} refers to files not in the repository: {missing}"
    assert not LOCAL_PAPER.findall(text), f"{doc.name} cites papers by a local file number; cite them by author/title"


def test_reference_check_catches_missing_files_and_private_paper_numbers(tmp_path):
    doc = tmp_path / "refs.md"
    doc.write_text("see `shared/papers/README.md`, `runtime/nothere.py` and [x](nothere.md)\n")
    with pytest.raises(AssertionError, match=r"\['nothere.md', 'shared/papers/README.md', 'runtime/nothere.py'\]"):
        test_doc_refers_only_to_files_in_the_repository(doc)
    doc.write_text("as in `runtime/blocks.py` (paper 003, eq. 9)\n")
    with pytest.raises(AssertionError, match="local file number"):
        test_doc_refers_only_to_files_in_the_repository(doc)
