"""The shape of the code: attribution and interventions never import each other, and every
TransformerLens import and architecture check lives in mechattr/runtime (organisms define
model configurations, which name config fields without testing a model)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mechattr"
ARCH_TOKENS = re.compile(
    r"n_key_value_heads|positional_embedding_type|normalization_type|original_architecture|attn_types"
    r"|parallel_attn_mlp|attn_scores_soft_cap|output_logits_soft_cap|use_attn_scale|\bis_hooked\(|\bis_bridge\("
    r"|isinstance\([^)]*(HookedTransformer|TransformerBridge)|\bHAS_HOOKED\b|\bTL_MAJOR\b"
)


def _files(sub: str = "") -> list[Path]:
    return sorted((ROOT / sub).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("engine,other", [("attribution", "interventions"), ("interventions", "attribution")])
def test_engines_never_import_each_other(engine, other):
    bad = {str(p.relative_to(ROOT)): sorted(i for i in _imports(p) if i.startswith(f"mechattr.{other}"))
           for p in _files(engine)}
    assert not {k: v for k, v in bad.items() if v}


def test_transformer_lens_imported_only_in_the_runtime():
    bad = {str(p.relative_to(ROOT)): sorted(i for i in _imports(p) if i.split(".")[0] == "transformer_lens")
           for p in _files() if "runtime" not in p.relative_to(ROOT).parts}
    assert not {k: v for k, v in bad.items() if v}


def test_no_architecture_check_outside_the_runtime():
    hits = []
    for p in _files():
        rel = p.relative_to(ROOT)
        if rel.parts[0] in ("runtime", "organisms"):
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if ARCH_TOKENS.search(code) and "noqa: F401" not in line:
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_rule_catches_a_violation(tmp_path):
    """The checks above can fail: a planted violation is found."""
    f = tmp_path / "x.py"
    f.write_text("def f(model):\n    from mechattr.interventions import variants\n    return model.cfg.n_key_value_heads\n")
    assert "mechattr.interventions" in _imports(f)
    assert ARCH_TOKENS.search(f.read_text())


def test_split_files_stay_small():
    for rel in ("interventions/variants.py", "targets.py"):
        n = len((ROOT / rel).read_text().splitlines())
        assert n < 400, f"{rel} has {n} lines"
