"""An instant import and CLI (issue 15): ``import mechattr`` and ``mechattr --help`` import
neither torch nor TransformerLens; every CLI option explains itself; errors are one line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import mechattr
from mechattr.cli import build_parser, main

HEAVY = ("torch", "transformer_lens", "transformers")


def _heavy_after(code: str) -> list[str]:
    """Which heavy libraries a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_import_mechattr_loads_no_torch_or_transformerlens():
    assert _heavy_after("import mechattr") == []


def test_mechattr_help_loads_no_torch_or_transformerlens():
    code = ("import contextlib, io\nfrom mechattr.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help']) if False else None\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert _heavy_after(code) == []


def test_light_names_load_torch_but_not_transformerlens():
    assert _heavy_after("from mechattr import targets, Head, load_model, prepare_tokens\n"
                        "targets.logit(3); Head(0, 1) < Head(1, 0)") == ["torch"]


def test_documented_submodule_paths_work_right_after_import():
    assert _heavy_after("import mechattr\nassert 'ig' in mechattr.attribution.tokens.method_names()") == ["torch"]


def test_every_public_name_resolves():
    for name in mechattr.__all__:
        assert getattr(mechattr, name) is not None, name
    assert set(mechattr.__all__) <= set(dir(mechattr))


def _options(command=None):
    parser = build_parser()  # every subcommand with its options
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd, p in sub.choices.items():
        for a in p._actions:
            if a.option_strings and not isinstance(a, argparse._HelpAction) and command in (None, cmd):
                yield cmd, p, a


@pytest.mark.parametrize("command", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_every_cli_option_has_help_that_states_its_default(command):
    missing, no_default = [], []
    for cmd, p, a in _options(command):
        if not a.help:
            missing.append(f"{cmd} {a.option_strings[0]}")
            continue
        text = p.formatter_class(prog="x")._get_help_string(a) % {"default": a.default}
        flag = isinstance(a, (argparse._StoreTrueAction, argparse._AppendAction)) or a.required
        if not flag and "default" not in text.lower():
            no_default.append(f"{cmd} {a.option_strings[0]}")
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not state the default: {no_default}"


def test_method_help_lists_the_registry():
    from mechattr.attribution.tokens import method_names

    helps = {(cmd, a.option_strings[0]): a.help for cmd, _, a in _options()}
    for m in method_names():
        assert m in helps[("attribute", "--method")] and m in helps[("report", "--methods")]


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "no_such_model")
    assert main(["attribute", missing, "w1 w2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mechattr attribute: error: ") and "no_such_model" in err
    for argv in (["--debug", "attribute", missing, "w1 w2"], ["attribute", missing, "w1 w2", "--debug"]):
        with pytest.raises(FileNotFoundError, match="no_such_model"):
            main(argv)
