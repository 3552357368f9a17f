"""Index's chat format for transformers: the tokenizer_config.json an exported model ships.

Owns the Jinja chat template and the tokenizer settings with which `AutoTokenizer` +
`apply_chat_template` give exactly the ids megaindex.data.chat trains on:
`<unk>{system}reserved_0{user}reserved_1{assistant}</s>reserved_0{user}reserved_1...`, no BOS.

Why these settings: megaindex encodes every segment (system, each user and assistant message) with
its own SentencePiece call, so each starts with SentencePiece's dummy-prefix space. transformers'
Llama tokenizer in `legacy` mode splits the rendered text at the special tokens and encodes each
piece the same way; `reserved_0`/`reserved_1` are registered as special tokens so the rendered
markers map to ids 3 and 4. Only `tokenizer.model` + this config are written: a `tokenizer.json`
re-saved by transformers 5 drops the legacy pre-tokenisation and changes the first token of every
turn (measured: all 170 fixture conversations differ). tests/test_cluster_run.py checks the ids.

The template ends a user turn with `reserved_1`, i.e. it always renders the generation prompt, as
Index's format does; `add_generation_prompt` changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

INDEX_CHAT_TEMPLATE = (
    "{{ '<unk>' }}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}"
    "{% if m['role'] == 'user' %}{{ 'reserved_0' + m['content'] + 'reserved_1' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + '</s>' }}"
    "{% else %}{{ raise_exception('Index chat roles are system (first only), user and assistant; got ' + m['role']) }}"
    "{% endif %}{% endfor %}"
)


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json for a stock LlamaTokenizer over Index's tokenizer.model."""
    return {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": True,  # every piece between special tokens keeps its dummy-prefix space (see module doc)
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",  # Index pads with </s>
        "additional_special_tokens": ["reserved_0", "reserved_1"],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": INDEX_CHAT_TEMPLATE,
    }


def write_tokenizer_config(out_dir: Path, model_max_length: int) -> Path:
    """Write tokenizer_config.json (and drop a tokenizer.json that would override it)."""
    path = Path(out_dir) / "tokenizer_config.json"
    path.write_text(json.dumps(tokenizer_config(model_max_length), indent=2, ensure_ascii=False) + "\n")
    stale = Path(out_dir) / "tokenizer.json"
    if stale.exists():
        stale.unlink()
    return path


def add_chat_template(config_path: Path) -> bool:
    """Give an existing tokenizer_config.json (Index's own, --format index) the template if it has none."""
    cfg = json.loads(Path(config_path).read_text())
    if cfg.get("chat_template"):
        return False
    cfg["chat_template"] = INDEX_CHAT_TEMPLATE
    Path(config_path).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return True
