"""Real preference sets from ../shared/data as canonical pair tables, plus label-flip injection.

Used by the vote benchmarks and tests. Reads the upstream files directly and builds tables with
prefcli.pairs.build_pairs (the ingest adapters do the same job for users).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from prefcli.pairs import build_pairs, user_prompt

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_messages(transcript: str) -> list[dict]:
    parts = _TURN.split("\n\n" + transcript.lstrip("\n") if not transcript.startswith("\n\n") else transcript)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def hh_harmless(data: Path = DATA, limit: int | None = None) -> pa.Table:
    """HH-RLHF harmless-base test: shared history as the prompt, the two last assistant turns as responses."""
    prompts, chosen, rejected = [], [], []
    with gzip.open(data / "hh-rlhf-harmless" / "test.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            c, r = _hh_messages(row["chosen"]), _hh_messages(row["rejected"])
            if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
                continue
            if c[:-1] != r[:-1] or not c[-1]["content"] or not r[-1]["content"] or not c[:-1]:
                continue
            if c[-1]["content"] == r[-1]["content"]:
                continue
            prompts.append(c[:-1])
            chosen.append(c[-1]["content"])
            rejected.append(r[-1]["content"])
            if limit and len(chosen) >= limit:
                break
    return build_pairs(prompts, chosen, rejected, source="hh-rlhf-harmless")


def alpaca_eval(data: Path = DATA, annotator: str = "alpaca_eval_gpt4", n: int = 4000, seed: int = 0) -> pa.Table:
    """One pair per (instruction, model) judged by `annotator`: reference output_1 vs output_2, ties dropped."""
    seen: dict[tuple[str, str], tuple[str, str, str]] = {}
    with gzip.open(data / "alpaca-eval-annotations" / "annotations_compact.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("annotator") != annotator or row.get("preference") not in (1, 2, 1.0, 2.0):
                continue
            o1, o2 = row.get("output_1") or "", row.get("output_2") or ""
            if not o1.strip() or not o2.strip() or o1 == o2:
                continue
            key = (row["instruction"], row["generator_2"])
            if key not in seen:
                good, bad = (o1, o2) if row["preference"] == 1 else (o2, o1)
                seen[key] = (row["instruction"], good, bad)
    keys = sorted(seen)
    pick = np.random.default_rng(seed).permutation(len(keys))[:n]
    rows = [seen[keys[i]] for i in sorted(pick)]
    return build_pairs([user_prompt(r[0]) for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                       source=f"alpaca-eval/{annotator}")


def llmbar(data: Path = DATA) -> pa.Table:
    prompts, chosen, rejected, sources = [], [], [], []
    for path in sorted((data / "llmbar").rglob("dataset.json")):
        for row in json.loads(path.read_text()):
            good, bad = (row["output_1"], row["output_2"]) if row["label"] == 1 else (row["output_2"], row["output_1"])
            if not good.strip() or not bad.strip() or good == bad:
                continue
            prompts.append(user_prompt(row["input"]))
            chosen.append(good)
            rejected.append(bad)
            sources.append("llmbar/" + "/".join(path.relative_to(data / "llmbar").parts[:-1]))
    return build_pairs(prompts, chosen, rejected, source=sources)


def pandalm(data: Path = DATA) -> pa.Table:
    """PandaLM test set with the majority of three annotators; ties and no-majority pairs dropped."""
    prompts, chosen, rejected, agreement = [], [], [], []
    for row in json.loads((data / "pandalm" / "testset-v1.json").read_text()):
        votes = Counter(row[f"annotator{i}"] for i in (1, 2, 3))
        label, count = votes.most_common(1)[0]
        if label not in (1, 2) or count < 2:
            continue
        r1, r2 = str(row["response1"]), str(row["response2"])
        if not r1.strip() or not r2.strip() or r1 == r2:
            continue
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        prompts.append(user_prompt(text))
        chosen.append(r1 if label == 1 else r2)
        rejected.append(r2 if label == 1 else r1)
        agreement.append(count / 3)
    return build_pairs(prompts, chosen, rejected, source="pandalm", annotator_agreement=agreement)


LOADERS = {"hh-harmless": hh_harmless, "alpacaeval": alpaca_eval, "llmbar": llmbar, "pandalm": pandalm}


def inject_flips(table: pa.Table, rate: float, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """Swap chosen/rejected on a random `rate` share of rows; returns (table, flipped mask)."""
    from prefcli.stages.vote import swap_sides

    rng = np.random.default_rng(seed)
    flipped = np.zeros(table.num_rows, dtype=bool)
    flipped[rng.choice(table.num_rows, int(round(rate * table.num_rows)), replace=False)] = True
    return swap_sides(table, flipped), flipped
