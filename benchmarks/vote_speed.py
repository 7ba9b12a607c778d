"""Speed of `prefcli vote`: ensemble pairs/s on CPU; hf: backend tokens/s and MFU against a naive pipeline loop.

  .venv/bin/python benchmarks/vote_speed.py ensemble [--dataset alpacaeval] [--pairs 4000] [--ensemble OPTS]
  .venv/bin/python benchmarks/vote_speed.py ensemble --pairs 20000 --ensemble model=static --compare-jobs

  .venv/bin/python benchmarks/vote_speed.py hashing [--pairs 20000]

`hashing` compares the lex view's fitted TF-IDF vocabulary with hashed features (sklearn's HashingVectorizer,
2^18 columns per analyzer, idf from the same responses) on real pairs: the vocabulary fit, the transform of
every response, the non-zeros per row and one cross-fitting fold's Bradley-Terry fit on each.

`--compare-jobs` embeds every text first (so neither run pays for it), then runs the ensemble with everything
one at a time (`jobs=1`) and with the default (folds on a thread per usable core where every pair is fitted,
lex transforms in worker processes from 10k pairs on), side by side, and checks that both gave the same
scores bit for bit.
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
    if args.compare_jobs:
        return compare_jobs(table, args)
    ensemble = OfflineEnsemble(parse_options(args.ensemble), device="cpu")
    start = time.perf_counter()
    cpu0 = time.process_time()
    vote(table, [ensemble], VoteOptions(seed=0))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    print(f"ensemble ({len(ensemble.members)} members) on {table.num_rows} {args.dataset} pairs: {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU, {table.num_rows / wall:.1f} pairs/s; texts embedded this run (cache misses): "
          f"{ensemble.computed}")


def compare_jobs(table, args) -> None:
    from prefcli.models.reward.ensemble import OfflineEnsemble, _both_sides, parse_options, usable_cores
    from prefcli.stages.vote import VoteOptions, vote

    warm = OfflineEnsemble(parse_options(args.ensemble), device="cpu")
    warm._inputs(*_both_sides(table))  # fills the embedding cache for both runs
    runs = {}
    for label, extra in (("jobs=1 (one at a time)", "jobs=1"), (f"default ({usable_cores()} cores)", "")):
        ensemble = OfflineEnsemble(parse_options(",".join(o for o in (args.ensemble, extra) if o)), device="cpu")
        start, cpu0 = time.perf_counter(), time.process_time()
        out = vote(table, [ensemble], VoteOptions(seed=0)).out
        runs[label] = (time.perf_counter() - start, time.process_time() - cpu0, out)
    print(f"ensemble on {table.num_rows} {args.dataset} pairs ({args.ensemble or 'defaults'}; embeddings cached)")
    base = next(iter(runs.values()))[0]
    for label, (wall, cpu, _) in runs.items():
        print(f"  {label:<28} {wall:8.1f} s wall {cpu:8.1f} s CPU {table.num_rows / wall:7.1f} pairs/s "
              f"x{base / wall:.2f}")
    first, second = (out for _, _, out in runs.values())
    print(f"  same output table: {first.equals(second)}")
    if not first.equals(second):
        raise SystemExit("the two runs differ")


def hashing_speed(args) -> None:
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
    from sklearn.pipeline import FeatureUnion, make_pipeline

    from prefcli.models.reward.ensemble import _Features, _fit_bt

    table = real_pairs.alpaca_eval(n=args.pairs)
    chosen, rejected = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
    responses = chosen + rejected
    fitted = _Features("lex")

    def hashed(analyzer: str, ngrams: tuple[int, int]):
        return make_pipeline(HashingVectorizer(analyzer=analyzer, ngram_range=ngrams, n_features=2 ** 18,
                                               alternate_sign=False, norm=None, dtype=np.float32),
                             TfidfTransformer(sublinear_tf=True))

    hashing = FeatureUnion([("word", hashed("word", (1, 2))), ("char", hashed("char_wb", (3, 5)))])
    rows = {}
    for label, fit in (("fitted vocabulary (default)", lambda: fitted.fit(responses, None)),
                       ("hashing, 2x2^18 columns", lambda: hashing.fit(sorted(set(responses))))):
        start = time.process_time()
        fit()
        fit_s = time.process_time() - start
        transform = fitted.transform if label.startswith("fitted") else (
            lambda texts, *_: hashing.transform(texts).tocsr())
        start = time.process_time()
        delta = transform(chosen, None, None, None) - transform(rejected, None, None, None)
        transform_s = time.process_time() - start
        train = np.flatnonzero(np.arange(len(chosen)) % 5 != 0)  # one fold of five
        start = time.process_time()
        _fit_bt(delta, train, np.ones(len(train)), 4.0)
        rows[label] = (fit_s, transform_s, delta.nnz / delta.shape[0], time.process_time() - start, delta.shape[1])
    print(f"lex view on {len(chosen)} AlpacaEval pairs ({len(responses)} responses), CPU seconds")
    print(f"  {'features':<30} {'fit':>7} {'transform':>10} {'nnz/pair':>9} {'one fold fit':>13} {'total':>7}")
    for label, (fit_s, transform_s, nnz, bt_s, width) in rows.items():
        print(f"  {label:<30} {fit_s:7.1f} {transform_s:10.1f} {nnz:9.0f} {bt_s:13.1f} "
              f"{fit_s + transform_s + bt_s:7.1f}   ({width:,} columns)")


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
    ens.add_argument("--compare-jobs", action="store_true",
                     help="jobs=1 vs the default (threaded folds, lex worker processes), embeddings cached, same run")
    hashing = sub.add_parser("hashing", help="lex view: fitted TF-IDF vocabulary vs hashed features")
    hashing.add_argument("--pairs", type=int, default=20000)
    hf = sub.add_parser("hf")
    hf.add_argument("--size", default="qwen3-0.6b", choices=sorted(SIZES))
    hf.add_argument("--items", type=int, default=256)
    hf.add_argument("--batch-size", type=int, default=32)
    hf.add_argument("--max-length", type=int, default=2048)
    hf.add_argument("--device", default="auto")
    args = parser.parse_args()
    {"ensemble": ensemble_speed, "hashing": hashing_speed, "hf": hf_speed}[args.what](args)


if __name__ == "__main__":
    main()
