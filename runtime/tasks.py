"""Zero-shot multiple-choice tasks in the form lm-evaluation-harness 0.4 gives them to a model.

Each document becomes one (context, continuation) request per choice, exactly the strings the
harness builds (its task YAMLs: doc_to_text, doc_to_choice, target_delimiter " "), plus the gold
index and the `choices` strings whose lengths acc_norm divides by. The data are the files in the
shared data folder (its SOURCES.md says where each came from and how it differs from the
Hugging Face split the harness reads):

    piqa           Question: {goal}\\nAnswer:            | " {sol1}", " {sol2}"            acc, acc_norm
    arc_easy/_challenge  Question: {stem}\\nAnswer:        | " {choice text}"...             acc, acc_norm
    hellaswag      {preprocessed query}                   | " {preprocessed ending}"...     acc, acc_norm
    openbookqa     {stem}                                 | " {choice text}"...             acc, acc_norm
    boolq          {title} -- {passage}\\nQuestion: {question}?\\nAnswer: | " no", " yes"    acc
    winogrande     {sentence before _}{option}            | " {sentence after _, stripped}" acc

Winogrande is the harness's partial evaluation: the option goes into the context, and the shared
rest of the sentence is the scored continuation.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import LarosaError

TARGET_DELIMITER = " "   # the harness's default target_delimiter, put before every continuation


@dataclass(frozen=True)
class Doc:
    """One document: requests[i] = (context, continuation) scored for choice i."""
    requests: tuple[tuple[str, str], ...]
    choices: tuple[str, ...]   # the harness's doc_to_choice strings (acc_norm: len(choice))
    gold: int

    @classmethod
    def shared_context(cls, context: str, choices: Iterable[str], gold: int) -> "Doc":
        """The usual form: one context, each choice as the continuation after the delimiter."""
        choices = tuple(choices)
        return cls(tuple((context, TARGET_DELIMITER + c) for c in choices), choices, gold)

    def __post_init__(self):
        if not 0 <= self.gold < len(self.requests):
            raise LarosaError(f"gold index {self.gold} outside the {len(self.requests)} choices")


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]                       # ("acc",) or ("acc", "acc_norm")
    files: tuple[str, ...]                         # relative to the data folder
    read: Callable[..., Iterator[Doc]]             # read(*paths) -> documents in file order


def data_dir() -> Path:
    """$LAROSA_DATA, else the shared data folder next to the checkout (../shared/data)."""
    env = os.environ.get("LAROSA_DATA")
    if env:
        return Path(env)
    import larosa.tools
    return Path(larosa.tools.__file__).resolve().parents[2] / "shared" / "data"


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _labels(path: Path) -> Iterator[int]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield int(line)


# -- the tasks --------------------------------------------------------------------------------

def _piqa(docs: Path, labels: Path) -> Iterator[Doc]:
    for d, label in zip(_jsonl(docs), _labels(labels), strict=True):
        yield Doc.shared_context(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], label)


def _arc(path: Path) -> Iterator[Doc]:
    # harness: doc_to_target = choices.label.index(answerKey); labels are A-E or 1-5
    for d in _jsonl(path):
        q = d["question"]
        labels = [c["label"] for c in q["choices"]]
        yield Doc.shared_context(f"Question: {q['stem']}\nAnswer:", [c["text"] for c in q["choices"]],
                                 labels.index(d["answerKey"]))


def _openbookqa(path: Path) -> Iterator[Doc]:
    # harness: doc_to_text = question_stem (no "Question:" frame), gold = label.index(answerKey.lstrip())
    for d in _jsonl(path):
        q = d["question"]
        labels = [c["label"] for c in q["choices"]]
        yield Doc.shared_context(q["stem"], [c["text"] for c in q["choices"]],
                                 labels.index(d["answerKey"].lstrip()))


def _boolq(path: Path) -> Iterator[Doc]:
    # The harness reads SuperGLUE's boolq, whose passage is "{title} -- {passage}" of the original
    # BoolQ release this file is; label 1 = True = " yes".
    for d in _jsonl(path):
        passage = f"{d['title']} -- {d['passage']}"
        yield Doc.shared_context(f"{passage}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"],
                                 int(bool(d["answer"])))


def _winogrande(path: Path) -> Iterator[Doc]:
    for d in _jsonl(path):
        s = d["sentence"]
        blank = s.index("_")
        contexts = tuple(s[:blank] + opt for opt in (d["option1"], d["option2"]))
        rest = TARGET_DELIMITER + s[blank + 1:].strip()
        yield Doc(tuple((c, rest) for c in contexts), contexts, {"1": 0, "2": 1}[d["answer"]])


def hellaswag_preprocess(text: str) -> str:
    """The harness's preprocess(): WikiHow bracket tags out, double spaces collapsed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_query(klosax_query: str) -> str:
    """The harness's query from the klosax text (SOURCES.md caveat 1), which is
    pre(activity_label + ": " + ctx_a + " " + ctx_b) without the harness's ctx_b.capitalize():
    an ActivityNet context ends in a lowercase ctx_b fragment after the last ". " ("... roof. he"),
    which is capitalized here the same way; contexts whose tail starts uppercase are left alone.
    Then the harness's preprocess() removes the few bracket tags klosax left in."""
    head, sep, tail = klosax_query.rpartition(". ")
    if sep and tail[:1].islower():
        klosax_query = head + sep + tail.capitalize()
    return hellaswag_preprocess(klosax_query)


def _hellaswag(path: Path) -> Iterator[Doc]:
    for d in _jsonl(path):
        yield Doc.shared_context(hellaswag_query(d["query"]),
                                 [hellaswag_preprocess(e) for e in d["endings"]], int(d["label"]))


ACC, ACC_NORM = "acc", "acc_norm"
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("piqa", (ACC, ACC_NORM), ("piqa/valid.jsonl", "piqa/valid-labels.lst"), _piqa),
    Task("arc_easy", (ACC, ACC_NORM), ("arc/ARC-Easy-Test.jsonl",), _arc),
    Task("arc_challenge", (ACC, ACC_NORM), ("arc/ARC-Challenge-Test.jsonl",), _arc),
    Task("hellaswag", (ACC, ACC_NORM), ("hellaswag/hellaswag_val_klosax.jsonl",), _hellaswag),
    Task("winogrande", (ACC,), ("winogrande/dev.jsonl",), _winogrande),
    Task("boolq", (ACC,), ("boolq/dev.jsonl",), _boolq),
    Task("openbookqa", (ACC, ACC_NORM), ("openbookqa/test.jsonl",), _openbookqa),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise LarosaError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def load_docs(name: str, limit: int | None = None, data: Path | None = None) -> list[Doc]:
    """The first `limit` documents of a task (all without a limit), in the files' order, which is
    the order of the split the harness reads, so --limit N selects the same documents."""
    task = get_task(name)
    if limit is not None and limit < 1:
        raise LarosaError(f"limit must be >= 1, got {limit}")
    root = data_dir() if data is None else Path(data)
    paths = [root / f for f in task.files]
    for p in paths:
        if not p.is_file():
            raise LarosaError(f"{name}: data file {p} not found (set LAROSA_DATA to the data folder)")
    try:
        return list(itertools.islice(task.read(*paths), limit))
    except (ValueError, KeyError, TypeError) as e:   # a malformed line: say where, no traceback
        raise LarosaError(f"{name}: cannot read {', '.join(map(str, paths))}: {e}") from e
