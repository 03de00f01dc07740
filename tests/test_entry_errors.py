"""Entry-point errors name the real mistake (issue 15): a string where a model is expected, a
string where token ids are expected, a target where ``corrupted`` goes, token ids where the
target goes — each caught by one shared helper in :mod:`mechattr.checks`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mechattr
from mechattr import targets
from mechattr.runtime.tl import HAS_HOOKED


@pytest.fixture
def pair(tokens):
    g = torch.Generator().manual_seed(1)
    return tokens, torch.randint(1, 24, tokens.shape, generator=g)


TGT = targets.logit(torch.tensor([3, 4, 5]))

# every public function that takes a model first: name -> call(model, clean, corrupted)
ENTRY = {
    "attribute_tokens": lambda m, c, x: mechattr.attribute_tokens(m, c, TGT, "saliency"),
    "attribute_heads": lambda m, c, x: mechattr.attribute_heads(m, c, TGT, corrupted=x),
    "attribute_resid": lambda m, c, x: mechattr.attribute_resid(m, c, TGT),
    "attribute_attention": lambda m, c, x: mechattr.attribute_attention(m, c, TGT),
    "attention_rollout": lambda m, c, x: mechattr.attention_rollout(m, c),
    "run_ablated": lambda m, c, x: mechattr.run_ablated(m, c, ["L0H0"]),
    "ablation_scan": lambda m, c, x: mechattr.ablation_scan(m, c, TGT),
    "activation_patch": lambda m, c, x: mechattr.activation_patch(m, c, x, TGT),
    "path_patch": lambda m, c, x: mechattr.path_patch(m, c, x, TGT, ["L0H0"], "logits"),
    "attribute_edges": lambda m, c, x: mechattr.attribute_edges(m, c, x, TGT, method="eap"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # attribute_resid's convergence warning on a random model
@pytest.mark.parametrize("name", sorted(ENTRY))
def test_entry_points_still_run_with_the_right_arguments(name, model, pair):
    if name == "attribute_edges" and not HAS_HOOKED:
        pytest.skip("edge circuits: the native test bridge of TransformerLens 4 has no per-head inputs")
    c, x = pair
    ENTRY[name](model, c, x)  # the checks do not reject valid calls


# The messages a user sees. Under pytest, jaxtyping+beartype (pyproject's --jaxtyping-packages)
# reject some wrong kinds by annotation before mechattr's own checks run, so the calls run
# in one plain interpreter (no import hook), as a user's would.
CASES = {
    **{f"model_string:{n}": (f"ENTRY[{n!r}]('gpt2', c, x)",
                             "TypeError: got the string 'gpt2' where a model is expected; load it first")
       for n in ENTRY},
    "model_guard_string": ("model_guard('organism:induction').__enter__()",
                           "got the string 'organism:induction' where a model is expected"),
    **{f"word_ids:{k}": (call, "TypeError: token_ids: got the string 't9' where token ids (ints) are expected")
       for k, call in {"logit": "targets.logit('t9')", "logprob": "targets.logprob(['t9', 3])",
                       "prob": "targets.prob('t9')"}.items()},
    "word_ids:logit_diff": ("targets.logit_diff(3, 'Paris')", "incorrect: got the string 'Paris' where token ids"),
    "word_ids:sequence": ("targets.sequence_logprob('a b')", "answer: got the string 'a b' where token ids"),
    **{f"target_as_corrupted:{k}": (call, "TypeError: corrupted is a target (Logit(pos=-1)), not token ids "
                                          "[batch, pos]: the target is passed where corrupted goes")
       for k, call in {"activation_patch": "mechattr.activation_patch(m, c, TGT, x)",
                       "path_patch": "mechattr.path_patch(m, c, TGT, x, ['L0H0'], 'logits')",
                       "attribute_edges": "mechattr.attribute_edges(m, c, TGT, x, method='eap')",
                       "attribute_heads": "mechattr.attribute_heads(m, c, TGT, corrupted=TGT)"}.items()},
    **{f"tokens_as_target:{k}": (call.format("x"), "TypeError: got a torch.int64 tensor of shape (3, 8) where a "
                                                   "target is expected")
       for k, call in {"attribute_tokens": "mechattr.attribute_tokens(m, c, {}, 'saliency')",
                       "attribute_heads": "mechattr.attribute_heads(m, c, {})",
                       "ablation_scan": "mechattr.ablation_scan(m, c, {})",
                       "activation_patch": "mechattr.activation_patch(m, c, x, {})"}.items()},
    **{f"corrupted_forgotten:{k}": (call, "TypeError: corrupted is a target (Logit(pos=-1)), not token ids "
                                          "[batch, pos]: the target is passed where corrupted goes (a missing")
       for k, call in {"activation_patch": "mechattr.activation_patch(m, c, TGT)",
                       "path_patch": "mechattr.path_patch(m, c, TGT, senders=['L0H0'], receivers='logits')",
                       "attribute_edges": "mechattr.attribute_edges(m, c, TGT)"}.items()},
    "text_as_target": ("mechattr.attribute_tokens(m, c, 'Paris')",
                       "TypeError: got the string 'Paris' where a target is expected; build one"),
    "model_as_tokens": ("mechattr.attribute_tokens(m, m, TGT, 'saliency')", "TypeError: tokens is a model ("),
}

SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
import mechattr
from mechattr import targets
from mechattr.model import model_guard
from conftest import make_model
from test_entry_errors import ENTRY, TGT
m = make_model()
g = torch.Generator().manual_seed(0)
c, x = torch.randint(1, 24, (3, 8), generator=g), torch.randint(1, 24, (3, 8), generator=g)
out = {{}}
for name, code in json.loads(sys.argv[1]).items():
    try:
        eval(code)
        out[name] = "no error"
    except Exception as err:
        out[name] = f"{{type(err).__name__}}: {{err}}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def messages():
    tests = str(Path(__file__).parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = {k: c for k, (c, _) in CASES.items()}
    p = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests), json.dumps(code)], capture_output=True,
                       text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_argument_kind_is_named_in_the_message(case, messages):
    assert CASES[case][1] in messages[case], messages[case]
