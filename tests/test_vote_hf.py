"""The hf: backend on a tiny randomly initialised Llama/Qwen-style reward model built in a temp dir (no hub)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import run_inproc
from prefcli.errors import InputError
from prefcli.models.reward import parse_rm_spec
from prefcli.pairs import build_pairs, user_prompt

CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
CORPUS = ["Is it safe to mix bleach and ammonia?", "No. Mixing them releases toxic chloramine gas.",
          "Sure, here is how to do it quickly.", "Write a haiku about autumn rain.",
          "Cold rain on the roof, the maple lets go its leaves, tea steams by the glass."]


def build_tiny_reward_model(path, *, arch: str = "llama", chat_template: bool = True) -> str:
    """A 2-layer model with one output and a byte-level BPE tokenizer trained on a few sentences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast, Qwen2Config,
                              Qwen2ForSequenceClassification)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, num_labels=1, max_position_embeddings=256,
                 pad_token_id=1, bos_token_id=2, eos_token_id=3)
    if arch == "qwen":
        model = Qwen2ForSequenceClassification(Qwen2Config(**shape))
    else:
        model = LlamaForSequenceClassification(LlamaConfig(**shape))
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-rm")
    return {"llama": build_tiny_reward_model(root / "llama"),
            "qwen_plain": build_tiny_reward_model(root / "qwen", arch="qwen", chat_template=False)}


PROMPTS = [user_prompt(CORPUS[0]), user_prompt(CORPUS[3]),
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": CORPUS[0]}]]
RESPONSES = [CORPUS[1], CORPUS[4], CORPUS[2] * 3]


@pytest.mark.parametrize("kind", ["llama", "qwen_plain"])
def test_scores_are_batching_invariant(tiny_models, kind):
    prompts, responses = PROMPTS * 3, [r + " " * i + "." * i for i, r in enumerate(RESPONSES * 3)]
    alone = np.array([parse_rm_spec(f"hf:{tiny_models[kind]}", device="cpu", use_cache=False)
                      .score(prompts[i:i + 1], responses[i:i + 1])[0] for i in range(len(responses))])
    for batch_size in (2, 4, 9):  # different batch partners, so different padding per item
        rm = parse_rm_spec(f"hf:{tiny_models[kind]}", device="cpu", batch_size=batch_size, use_cache=False)
        np.testing.assert_allclose(rm.score(prompts, responses), alone, rtol=1e-4, atol=1e-5)
    assert np.ptp(alone) > 0  # a real model: responses get different rewards


def test_chat_template_is_used_and_plain_fallback(tiny_models):
    with_template = parse_rm_spec(f"hf:{tiny_models['llama']}", device="cpu", use_cache=False)
    ids = with_template.encode(PROMPTS[:1], RESPONSES[:1])[0]
    text = with_template._tokenizer.decode(ids)
    assert text.startswith("<s>user: ") and "<s>assistant: " + RESPONSES[0] in text
    plain = parse_rm_spec(f"hf:{tiny_models['qwen_plain']}", device="cpu", use_cache=False)
    ids = plain.encode(PROMPTS[2:3], RESPONSES[:1])[0]
    assert plain._tokenizer.decode(ids) == \
        f"system: Be brief.\n\nuser: {CORPUS[0]}\n\nassistant: {RESPONSES[0]}"


def test_truncation_is_counted_and_keeps_the_end(tiny_models):
    rm = parse_rm_spec(f"hf:{tiny_models['llama']}", device="cpu", max_length=12, use_cache=False)
    full = parse_rm_spec(f"hf:{tiny_models['llama']}", device="cpu", use_cache=False)
    ids = rm.encode(PROMPTS, RESPONSES)
    assert all(len(s) <= 12 for s in ids) and rm.truncated == 3
    assert ids[0] == full.encode(PROMPTS[:1], RESPONSES[:1])[0][-12:]


def test_remote_code_is_refused_and_bad_models_fail_in_one_line(tiny_models, tmp_path):
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(tiny_models["llama"], custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="my_custom_rm", auto_map={"AutoConfig": "modeling_x.XConfig",
                                                       "AutoModelForSequenceClassification": "modeling_x.XModel"})
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="cannot load"):
        parse_rm_spec(f"hf:{custom}", device="cpu", use_cache=False).score(PROMPTS[:1], RESPONSES[:1])
    with pytest.raises(InputError, match="cannot load"):
        parse_rm_spec(f"hf:{tmp_path / 'empty'}", device="cpu", use_cache=False).score(PROMPTS[:1], RESPONSES[:1])


def _pairs(n: int):
    prompts = [user_prompt(f"{CORPUS[i % 5]} #{i}") for i in range(n)]
    return build_pairs(prompts, [CORPUS[(i + 1) % 5] + f" ({i})" for i in range(n)],
                       [CORPUS[(i + 2) % 5] + f" [{i}]" for i in range(n)], source="tiny")


def test_score_cache_hit_on_rerun_and_refresh_scores_only_new_pairs(tiny_models, tmp_path):
    cache = tmp_path / "cache"
    first, grown = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(_pairs(12), first)
    pq.write_table(_pairs(15), grown)
    spec = f"tiny=hf:{tiny_models['llama']}"

    def run(src):
        proc = run_inproc("vote", str(src), "-o", str(tmp_path / "out.parquet"), "--rm", spec, "--device", "cpu",
                          "--cache-dir", str(cache), "--json", "--seed", "1")
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout), pq.read_table(tmp_path / "out.parquet")

    stats, out = run(first)
    assert stats["rm_tiny_computed"] == 24
    stats, again = run(first)
    assert stats["rm_tiny_computed"] == 0
    np.testing.assert_allclose(again.column("rm_tiny_chosen").to_numpy(), out.column("rm_tiny_chosen").to_numpy(),
                               rtol=1e-6)
    stats, _ = run(grown)
    assert stats["rm_tiny_computed"] == 6  # 3 new pairs, 2 responses each
