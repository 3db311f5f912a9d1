"""A tiny Llama for the serving example and its tests: made here in seconds,
with nothing downloaded, and small enough that vLLM loads it in seconds and
generates hundreds of tokens a second on one CPU core.

Two layers, hidden size 64, two heads of 32 (a head size vLLM's CPU
attention supports), weights drawn from a fixed seed and saved as
safetensors through transformers' ``LlamaForCausalLM``, beside a byte-level
BPE tokenizer trained here on a few sentences, with a chat template. Its
text is noise, but every piece of the serving path (tokenizer, chat
template, engine, detokenizer) is the real one. The same seed makes the
same files.

    target/venv/bin/python examples/serving/tiny_model.py target/tiny-llama
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

#: The files a complete model folder holds; ``config.json`` is moved in last.
FILES = ("tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json")

#: Turns as ``<|role|>`` lines closed by the end-of-sequence token; the
#: prompt for a reply ends in ``<|assistant|>``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")

#: What the tokenizer learns its merges from.
CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "A plugin runs in a sandbox and sees only what the operator grants it.",
    "The trainer saves a checkpoint every hundred steps and evaluates the model.",
    "Hello! How are you today? I am fine, thank you.",
    "What is the capital of France? Paris is the capital of France.",
    "Tell me a story about a robot that learns to paint.",
    "The engine streams tokens to the client as soon as they are ready.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.",
)


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds every file of a model."""
    return all((path / name).is_file() for name in FILES)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tokenizer


def _save(folder: Path, seed: int) -> None:
    """Writes a model's files into the empty folder ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(),
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    # The template in tokenizer_config.json, where every reader looks, rather
    # than in a chat_template.jinja of its own.
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    config_file.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
    (folder / "chat_template.jinja").unlink(missing_ok=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    # The caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)


def make_tiny_llama(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """The folder ``path`` holding a tiny Llama, made there unless it already
    holds a complete one. The files are made in a temporary folder beside it
    and moved in, ``config.json`` last, so a model cut short is made again."""
    path = Path(path)
    if is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        _save(staging, seed)
        path.mkdir(exist_ok=True)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(item, path / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} FOLDER")
    print(make_tiny_llama(sys.argv[1]))
