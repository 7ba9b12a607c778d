"""The exports in the real downstream loaders, the way their users run them.

- TRL 1.16 `DPOTrainer` and `RewardTrainer` train 2 steps on a tiny random Qwen2 (built here, offline) on
  every TRL-shaped export, and the tokens they build are exactly the chat-templated conversation.
- OpenRLHF is too heavy for CI: `openrlhf_preprocess` restates its loading contract, with and without
  `--apply_chat_template`, and every export is checked against both flag sets.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pytest

from conftest import run_inproc
from prefcli import io
from prefcli.pairs import build_pairs, user_prompt
from prefcli.schema import with_stage_columns
from prefcli.stages.export import PLAIN_CHAT_TEMPLATE
from test_vote_hf import build_tiny_reward_model

trl = pytest.importorskip("trl")  # a declared dev dependency; the skip only guards a partial install

# ChatML-like, with a generation prompt: what TRL and OpenRLHF call through tokenizer.apply_chat_template.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
SYSTEM = {"role": "system", "content": "Be brief."}
PROMPTS = [
    user_prompt("How do I reverse a list in Python? I'd like a practical answer."),
    [SYSTEM, {"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."},
     {"role": "user", "content": "Another one?"}],
    user_prompt("Write a haiku about autumn rain."),
    user_prompt("Is it safe to mix bleach and ammonia?"),
    user_prompt("How do I reverse a list in Python? I'd like a practical answer."),
]
CHOSEN = ["Use slicing: xs[::-1].", "Eleven.", "Cold rain on the roof.", "No, it releases toxic gas.",
          "Use slicing: xs[::-1]."]
REJECTED = ["Lists cannot be reversed.", "Nine.", "Rain.", "Sure.", "Lists cannot be reversed."]
MARGINS = [1.5, -0.4, 0.2, 2.0, 1.5]  # row 1: the RMs disagree with the label; row 4 repeats row 0
N_TRAIN = 4  # the repeat is left out
SHAPES = {"trl": "conversational", "trl-conversational": "conversational", "hf-dataset": "conversational",
          "parquet": "conversational", "trl-standard": "standard"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    table = build_pairs(PROMPTS, CHOSEN, REJECTED, source="tiny", label_source="ai")
    table = with_stage_columns(table, "vote", {"margin": pa.array(MARGINS, pa.float64())})
    root = tmp_path_factory.mktemp("export-trainers")
    io.write_table(table, root / "pairs.parquet")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Qwen2 reward model and causal LM sharing one byte-level tokenizer (no hub)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("tiny-qwen2")
    rm = build_tiny_reward_model(root / "rm", arch="qwen")
    config = AutoConfig.from_pretrained(rm)
    config.max_position_embeddings = 512
    Qwen2ForCausalLM(config).save_pretrained(root / "lm")
    tok = AutoTokenizer.from_pretrained(rm)
    tok.chat_template = CHAT_TEMPLATE
    for path in (rm, root / "lm"):
        tok.save_pretrained(path)
    return {"rm": str(rm), "lm": str(root / "lm")}


def _export(root, fmt, out, *extra):
    proc = run_inproc("export", str(root / "pairs.parquet"), "--to", fmt, "-o", str(out), "--json", *extra)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def _load(root, fmt, tmp_path) -> datasets.Dataset:
    out = tmp_path / {"hf-dataset": "ds", "parquet": "train.parquet"}.get(fmt, "train.jsonl")
    stats = _export(root, fmt, out)
    assert stats["rows_out"] == N_TRAIN and stats["repeats_left_out"] == 1 and stats["margins_raised"] == 1
    if fmt == "hf-dataset":
        return datasets.load_from_disk(str(out))
    kind = "parquet" if fmt == "parquet" else "json"
    return datasets.load_dataset(kind, data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))


def _tokenizer(path, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = template
    return tok


def _expected(tok, k: int, side: str) -> tuple[str, str]:
    """(prompt with generation cue, whole conversation) as the tokenizer's chat template renders row k."""
    answer = {"role": "assistant", "content": (CHOSEN if side == "chosen" else REJECTED)[k]}
    prompt = tok.apply_chat_template(PROMPTS[k], tokenize=False, add_generation_prompt=True)
    return prompt, tok.apply_chat_template(PROMPTS[k] + [answer], tokenize=False)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
               logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, **kw)


def _trained(trainer) -> list[float]:
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(np.isfinite(losses)), trainer.state.log_history
    return losses


@pytest.mark.parametrize("fmt", list(SHAPES))
def test_reward_trainer_sees_the_templated_conversation(pairs, tiny, tmp_path, fmt):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    ds = _load(pairs, fmt, tmp_path)
    # A base model's standard rows are rendered with PLAIN_CHAT_TEMPLATE; conversational rows with the model's.
    tok = _tokenizer(tiny["rm"], PLAIN_CHAT_TEMPLATE if SHAPES[fmt] == "standard" else CHAT_TEMPLATE)
    model = AutoModelForSequenceClassification.from_pretrained(tiny["rm"])
    trainer = RewardTrainer(model=model, args=_args(RewardConfig, tmp_path, max_length=None), train_dataset=ds,
                            processing_class=tok)
    seen = trainer.train_dataset
    assert seen.num_rows == N_TRAIN
    for k in range(N_TRAIN):  # export keeps the input order: rows 0..3
        for side in ("chosen", "rejected"):
            prompt, whole = _expected(tok, k, side)
            text = tok.decode(seen[k][f"{side}_ids"])
            if SHAPES[fmt] == "standard":  # TRL appends EOS to text rows
                whole += tok.eos_token
            assert text == whole, (fmt, k, side, text)
            assert seen[k][f"{side}_ids"] == _ids(tok, whole)  # the very tokens of the templated conversation
            assert text.startswith(prompt) and len(text) > len(prompt)
    assert min(seen["margin"]) == 0.0 and max(seen["margin"]) == 2.0  # the negative margin is floored
    _trained(trainer)


@pytest.mark.parametrize("fmt", list(SHAPES))
def test_dpo_trainer_prompt_ends_where_the_response_begins(pairs, tiny, tmp_path, fmt):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    ds = _load(pairs, fmt, tmp_path)
    tok = _tokenizer(tiny["lm"], PLAIN_CHAT_TEMPLATE if SHAPES[fmt] == "standard" else CHAT_TEMPLATE)
    model = AutoModelForCausalLM.from_pretrained(tiny["lm"])
    trainer = DPOTrainer(model=model, args=_args(DPOConfig, tmp_path, max_length=None), train_dataset=ds,
                         processing_class=tok)
    seen = trainer.train_dataset
    assert seen.num_rows == N_TRAIN
    for k in range(N_TRAIN):
        for side in ("chosen", "rejected"):
            prompt, whole = _expected(tok, k, side)
            if SHAPES[fmt] == "standard":
                whole += tok.eos_token
            assert seen[k]["prompt_ids"] == _ids(tok, prompt)  # ends with the assistant cue
            assert seen[k]["prompt_ids"] + seen[k][f"{side}_ids"] == _ids(tok, whole)
    cue = "Assistant:" if SHAPES[fmt] == "standard" else "<s>assistant\n"
    assert tok.decode(seen[1]["prompt_ids"]).endswith("Another one?" + ("\n\n" if cue[0] == "A" else "</s>\n") + cue)
    _trained(trainer)


def test_standard_rows_render_the_plain_template(pairs, tmp_path):
    """`trl-standard` text is PLAIN_CHAT_TEMPLATE: prompt + response is the rendered conversation, no glue."""
    from jinja2 import Environment

    template = Environment().from_string(PLAIN_CHAT_TEMPLATE)
    _export(pairs, "trl-standard", tmp_path / "std.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "std.jsonl").read_text().splitlines()]
    for k, row in enumerate(rows):
        answer = [{"role": "assistant", "content": CHOSEN[k]}]
        assert row["prompt"] == template.render(messages=PROMPTS[k], add_generation_prompt=True)
        assert row["prompt"] + row["chosen"] == template.render(messages=PROMPTS[k] + answer)
    assert rows[0]["prompt"].endswith("practical answer.\n\nAssistant:") and rows[0]["chosen"].startswith(" Use")
    assert rows[1]["prompt"] == "Be brief.\n\nUser: Name a prime.\n\nAssistant: Seven.\n\nUser: Another one?" \
                                "\n\nAssistant:"


# --------------------------------------------------------------------------- OpenRLHF

def openrlhf_preprocess(data: dict, tokenizer, *, apply_chat_template: bool, prompt_key: str | None = None,
                        chosen_key: str = "chosen", rejected_key: str = "rejected", is_dpo: bool = False):
    """OpenRLHF's reward/DPO loading contract: (prompt, chosen, rejected) text as it tokenises them.

    Restated from OpenRLHF `openrlhf/datasets/reward_dataset.py` (`preprocess_data` and
    `RewardDataset.__getitem__`, commit 0008ea1a8bc6dae5bdb2369db53a06170d81323c) and the defaults of
    `openrlhf/cli/train_rm.py` / `train_dpo.py`: `prompt_key` None, `chosen_key` "chosen", `rejected_key`
    "rejected" (spelled `--data.prompt_key`, `--data.apply_chat_template`, ... in the dotted CLI of v0.10
    and later). Nothing of OpenRLHF is imported or vendored.
    """
    template = tokenizer.apply_chat_template if apply_chat_template else None
    if template:
        if prompt_key:
            prompt = template(data[prompt_key], tokenize=False, add_generation_prompt=True)
            chosen = template(data[prompt_key] + data[chosen_key], tokenize=False)[len(prompt):]
            rejected = template(data[prompt_key] + data[rejected_key], tokenize=False)[len(prompt):]
        else:
            prompt = ""
            chosen = template(data[chosen_key], tokenize=False)
            rejected = template(data[rejected_key], tokenize=False)
            if is_dpo:
                prompt = template(data[chosen_key][:-1], tokenize=False, add_generation_prompt=True)
                chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    else:
        prompt = data[prompt_key] if prompt_key else ""
        chosen, rejected = data[chosen_key], data[rejected_key]
    margin = data["margin"] if data.get("margin") is not None else 0
    # __getitem__: prompt + response, trailing newlines stripped, " " + EOS unless already there.
    texts = []
    for response in (chosen, rejected):
        text = (prompt + response).rstrip("\n")
        texts.append(text if text.endswith(tokenizer.eos_token) else text + " " + tokenizer.eos_token)
    return prompt, texts[0], texts[1], margin


def _eos(text: str, eos: str) -> str:
    text = text.rstrip("\n")
    return text if text.endswith(eos) else text + " " + eos


@pytest.mark.parametrize("is_dpo", [False, True])
def test_openrlhf_export_with_its_default_keys_and_chat_template(pairs, tiny, tmp_path, is_dpo):
    _export(pairs, "openrlhf", tmp_path / "orl.jsonl")
    rows = list(datasets.load_dataset("json", data_files=str(tmp_path / "orl.jsonl"), split="train",
                                      cache_dir=str(tmp_path / "hf")))
    assert len(rows) == N_TRAIN and "prompt" not in rows[0]  # implicit prompt: nothing for prompt_key to miss
    tok = _tokenizer(tiny["rm"], CHAT_TEMPLATE)
    for k, row in enumerate(rows):
        prompt, chosen, rejected, margin = openrlhf_preprocess(row, tok, apply_chat_template=True, is_dpo=is_dpo)
        expected_prompt, whole = _expected(tok, k, "chosen")
        assert chosen == _eos(whole, tok.eos_token)  # the model sees the prompt, then the response
        assert rejected == _eos(_expected(tok, k, "rejected")[1], tok.eos_token)
        assert prompt == (expected_prompt if is_dpo else "")
        assert margin == max(MARGINS[k], 0.0)
    # Without --apply_chat_template the message lists cannot be concatenated: a loud error, never wrong text.
    with pytest.raises(TypeError):
        openrlhf_preprocess(rows[0], tok, apply_chat_template=False)
    # A --data.prompt_key prompt left over from another recipe fails loudly too.
    with pytest.raises(KeyError):
        openrlhf_preprocess(rows[0], tok, apply_chat_template=True, prompt_key="prompt")


@pytest.mark.parametrize("fmt", ["trl", "hf-dataset"])
def test_openrlhf_conversational_exports_need_prompt_key(pairs, tiny, tmp_path, fmt):
    ds = _load(pairs, fmt, tmp_path)
    tok = _tokenizer(tiny["rm"], CHAT_TEMPLATE)
    for k, row in enumerate(ds):
        for is_dpo in (False, True):
            prompt, chosen, _, _ = openrlhf_preprocess(row, tok, apply_chat_template=True, prompt_key="prompt",
                                                       is_dpo=is_dpo)
            expected_prompt, whole = _expected(tok, k, "chosen")
            assert prompt == expected_prompt and chosen == _eos(whole, tok.eos_token)
    # OpenRLHF's default (no prompt_key) drops the prompt of these shapes: hence --data.prompt_key prompt.
    _, chosen, _, _ = openrlhf_preprocess(ds[0], tok, apply_chat_template=True)
    assert PROMPTS[0][0]["content"] not in chosen
    with pytest.raises((TypeError, AttributeError)):  # and without the chat template it cannot run at all
        openrlhf_preprocess(ds[0], tok, apply_chat_template=False, prompt_key="prompt")


def test_openrlhf_text_flags_on_the_standard_export(pairs, tiny, tmp_path):
    """Without --apply_chat_template: `trl-standard` with --data.prompt_key prompt is the rendered conversation."""
    from jinja2 import Environment

    template = Environment().from_string(PLAIN_CHAT_TEMPLATE)
    _export(pairs, "trl-standard", tmp_path / "std.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "std.jsonl").read_text().splitlines()]
    tok = _tokenizer(tiny["rm"], None)
    for k, row in enumerate(rows):
        answer = [{"role": "assistant", "content": REJECTED[k]}]
        _, _, rejected, _ = openrlhf_preprocess(row, tok, apply_chat_template=False, prompt_key="prompt")
        assert rejected == template.render(messages=PROMPTS[k] + answer) + " " + tok.eos_token
