"""Speed of `prefcli vote`: ensemble pairs/s on CPU; hf: backend tokens/s and MFU against a naive pipeline loop.

  .venv/bin/python benchmarks/vote_speed.py ensemble [--dataset alpacaeval] [--pairs 4000]
  .venv/bin/python benchmarks/vote_speed.py hf [--size qwen3-0.6b|small] [--items 256] [--device auto]

`hf` builds a randomly initialised Qwen3 reward model (Qwen3-0.6B shape: same cost as the real one)
with a locally trained byte-level tokenizer (no hub), scores real AlpacaEval responses with the
hf: backend (length-sorted dynamic padding, bf16 on CUDA) and with a naive `transformers`
text-classification pipeline called once per item, and prints tokens/s, the ratio, and MFU
(2·params·tokens FLOPs against the GPU's dense bf16 peak; CPU has no fixed peak, so no MFU).
`--size small` is the CPU fallback (a 4-layer, 256-wide model) so the comparison runs anywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import real_pairs  # noqa: E402

SIZES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, vocab_size=32000),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def ensemble_speed(args) -> None:
    from prefcli.models.reward.ensemble import OfflineEnsemble, parse_options
    from prefcli.stages.vote import VoteOptions, vote

    load = real_pairs.LOADERS[args.dataset]
    table = load(n=args.pairs) if load is real_pairs.alpaca_eval else load()  # alpaca_eval samples 4000 by default
    table = table.slice(0, min(args.pairs, table.num_rows))
    ensemble = OfflineEnsemble(parse_options(args.ensemble), device="cpu")
    start = time.perf_counter()
    cpu0 = time.process_time()
    vote(table, [ensemble], VoteOptions(seed=0))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    print(f"ensemble ({len(ensemble.members)} members) on {table.num_rows} {args.dataset} pairs: {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU, {table.num_rows / wall:.1f} pairs/s; texts embedded this run (cache misses): "
          f"{ensemble.computed}")


def build_random_qwen3(path: Path, size: str, texts: list[str]) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForSequenceClassification

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=["<unk>", "<pad>", "<|im_end|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen3Config(**SIZES[size], num_labels=1, pad_token_id=1, eos_token_id=2, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    Qwen3ForSequenceClassification(config).save_pretrained(path)


def hf_speed(args) -> None:
    import torch
    from transformers import pipeline

    from prefcli.models.reward.hf import HFRewardModel

    table = real_pairs.alpaca_eval(n=args.items, seed=5)
    prompts = table.column("prompt").to_pylist()
    responses = table.column("chosen").to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        build_random_qwen3(Path(tmp), args.size, [p[0]["content"] for p in prompts] + responses)
        rm = HFRewardModel(tmp, device=args.device, max_length=args.max_length, batch_size=args.batch_size,
                           use_cache=False)
        rm.score(prompts[:4], responses[:4])  # load + warm up
        rm.tokens = 0
        sync = torch.cuda.synchronize if rm.device == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        ours = rm.score(prompts, responses)
        sync()
        ours_s = time.perf_counter() - start
        tokens = rm.tokens
        params = sum(p.numel() for p in rm._model.parameters())
        texts = [rm._tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
                 for p, r in zip(prompts, responses)]
        pipe = pipeline("text-classification", model=rm._model, tokenizer=rm._tokenizer, device=rm._model.device,
                        function_to_apply="none")
        pipe(texts[0], truncation=True, max_length=args.max_length)
        sync()
        start = time.perf_counter()
        naive = np.array([pipe(t, truncation=True, max_length=args.max_length)[0]["score"] for t in texts])
        sync()
        naive_s = time.perf_counter() - start
    device = torch.cuda.get_device_name() if rm.device == "cuda" else "cpu"
    print(f"hf: {args.size} ({params / 1e6:.0f}M params) on {device}, {len(texts)} items, {tokens} tokens")
    print(f"  prefcli hf: backend: {ours_s:.2f} s, {tokens / ours_s:,.0f} tokens/s, {len(texts) / ours_s:.1f} items/s")
    print(f"  naive pipeline loop: {naive_s:.2f} s, {tokens / naive_s:,.0f} tokens/s ({naive_s / ours_s:.1f}x slower)")
    print(f"  max |score difference| vs pipeline: {np.abs(ours - naive).max():.3g} (bf16 on CUDA: ~1e-2 expected)")
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    if peak:
        print(f"  MFU: {2 * params * tokens / ours_s / peak:.1%} (backend), {2 * params * tokens / naive_s / peak:.1%} "
              f"(naive), against {peak / 1e12:.0f} TFLOP/s dense bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ens = sub.add_parser("ensemble")
    ens.add_argument("--dataset", default="alpacaeval", choices=sorted(real_pairs.LOADERS))
    ens.add_argument("--pairs", type=int, default=4000)
    ens.add_argument("--ensemble", default="")
    hf = sub.add_parser("hf")
    hf.add_argument("--size", default="qwen3-0.6b", choices=sorted(SIZES))
    hf.add_argument("--items", type=int, default=256)
    hf.add_argument("--batch-size", type=int, default=32)
    hf.add_argument("--max-length", type=int, default=2048)
    hf.add_argument("--device", default="auto")
    args = parser.parse_args()
    ensemble_speed(args) if args.what == "ensemble" else hf_speed(args)


if __name__ == "__main__":
    main()
