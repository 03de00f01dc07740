"""The architecture matrix: tiny random HF causal LMs of every family mechattr supports.

Each model is built from its transformers config (2 layers, 4 query heads, d_model 32,
vocab 64, 32 positions, fixed seed), saved with ``save_pretrained`` next to a word-level
tokenizer, lazily (only when a test asks for it) and once per session.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 64
N_POS = 32
IDS = dict(bos_token_id=1, eos_token_id=1, pad_token_id=2)


def _llama_like(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=N_POS, initializer_range=0.1, **IDS)
    base.update(kw)
    return base


def _configs() -> dict:
    """name -> (config class name, kwargs)."""
    return {
        "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_positions=N_POS, n_embd=32, n_layer=2, n_head=4, initializer_range=0.1, **IDS)),
        "pythia": ("GPTNeoXConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=N_POS, rotary_pct=0.5,
                                         initializer_range=0.1, **IDS)),
        "gptj": ("GPTJConfig", dict(vocab_size=VOCAB, n_positions=N_POS, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                    initializer_range=0.1, **IDS)),
        "gptneo": ("GPTNeoConfig", dict(vocab_size=VOCAB, max_position_embeddings=N_POS, hidden_size=32, num_layers=2,
                                        num_heads=4, attention_types=[[["global", "local"], 1]], window_size=4,
                                        initializer_range=0.1, **IDS)),
        "opt": ("OPTConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                                  max_position_embeddings=N_POS, word_embed_proj_dim=32, init_std=0.1, **IDS)),
        "bloom": ("BloomConfig", dict(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, initializer_range=0.1, **IDS)),
        "llama": ("LlamaConfig", _llama_like()),
        "llama_gqa": ("LlamaConfig", _llama_like(num_key_value_heads=2)),
        "mistral": ("MistralConfig", _llama_like(num_key_value_heads=2, head_dim=8, sliding_window=None)),
        "qwen2": ("Qwen2Config", _llama_like(num_key_value_heads=2)),
        "qwen3": ("Qwen3Config", _llama_like(num_key_value_heads=2, head_dim=8)),
        "gemma": ("GemmaConfig", _llama_like(num_key_value_heads=1, head_dim=8)),
        "gemma2": ("Gemma2Config", _llama_like(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                                               sliding_window=4, attn_logit_softcapping=50.0,
                                               final_logit_softcapping=30.0)),
        "phi": ("PhiConfig", _llama_like(partial_rotary_factor=0.5)),
        "phi3": ("Phi3Config", _llama_like(original_max_position_embeddings=N_POS)),
    }


ARCHS = list(_configs())
GQA = {"llama_gqa", "mistral", "qwen2", "qwen3", "gemma", "gemma2"}  # n_kv_heads < n_heads


def save_tokenizer(d: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="w1", eos_token="w1", pad_token="w2", unk_token="w0").save_pretrained(d)


def build(name: str, d: Path, seed: int = 0) -> Path:
    """Build the tiny ``name`` model with a fixed seed and save it (weights + tokenizer) to ``d``."""
    import transformers

    cls_name, kw = _configs()[name]
    cfg = getattr(transformers, cls_name)(**kw)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    save_tokenizer(d)
    return d


class ArchDirs:
    """Lazily built, session-cached model directories (one per architecture)."""

    def __init__(self, factory):
        self._factory = factory
        self._dirs: dict[str, Path] = {}

    def __call__(self, name: str) -> Path:
        if name not in self._dirs:
            if name == "gpt2_no_n_ctx":
                d = build("gpt2", self._factory.mktemp("gpt2_no_n_ctx"))
                cfg = json.loads((d / "config.json").read_text())
                cfg.pop("n_ctx", None)  # as transformers 5 writes it
                (d / "config.json").write_text(json.dumps(cfg))
            elif name == "gpt2_misleading_path":
                d = build("gpt2", self._factory.mktemp("x") / "meta-llama" / "google_gemma-2b" / "llama-gemma")
            else:
                d = build(name, self._factory.mktemp(name))
            self._dirs[name] = d
        return self._dirs[name]


@pytest.fixture(scope="session")
def arch_dir(tmp_path_factory):
    """``arch_dir(name) -> Path`` of the saved tiny model ``name`` (built on first use)."""
    return ArchDirs(tmp_path_factory)


class Loaded:
    """Session cache of loaded models: ``loaded(name, kind)`` with kind "hooked" | "bridge"."""

    def __init__(self, dirs):
        self._dirs = dirs
        self._models: dict = {}

    def __call__(self, name: str, kind: str):
        key = (name, kind)
        if key not in self._models:
            from mechattr.runtime.loading import load_model

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._models[key] = load_model(self._dirs(name), device="cpu", bridge=(kind == "bridge"))
            except Exception as err:  # cache the failure too: one try per session
                self._models[key] = err
        m = self._models[key]
        if isinstance(m, Exception):
            raise m
        return m


@pytest.fixture(scope="session")
def loaded(arch_dir):
    return Loaded(arch_dir)
