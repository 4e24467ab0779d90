"""Make the demo's assets: synthetic instruction data, a small English corpus, and the tokenizer.

Nothing can be downloaded, so every file the README demo needs is made here, deterministically
(fixed seeds, one thread): running the script again rewrites the same bytes.

    .venv/bin/python scripts/make_tiny_assets.py            # writes into this repository
    .venv/bin/python scripts/make_tiny_assets.py --root DIR # writes under DIR instead

Outputs (paths relative to the root):
    specs/data/demo_train.jsonl      4000 Alpaca-style records
    specs/data/demo_heldout.jsonl    200 records whose (instruction, input) never occur in training
    specs/data/demo_preference.jsonl 1000 DPO pairs {"prompt", "chosen", "rejected"}, none held out
    runtime/assets/tiny/corpus.txt   the English half of the tokenizer's training text
    runtime/assets/tiny/tokenizer.model

The tasks are chosen so that a ~3 M parameter model trained from random init learns them in a few
minutes on a CPU and generalises: every answer is copied, reordered or selected from the input, over a
small vocabulary of short words and digits, so held-out records are new combinations of known parts.
The preference pairs pit each correct answer against a plausible wrong one (another task's answer
to the same items, a wrong item, or one item too few or too many), so DPO has something to prefer.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import sentencepiece as spm

from tunegen.runtime.data.templates import PROMPT_TEMPLATES

__all__ = [
    "TASKS",
    "WORDS",
    "make_corpus",
    "make_preference_records",
    "make_records",
    "train_tokenizer",
    "write_assets",
    "wrong_answer",
]

SEED = 1234
NUM_TRAIN = 4000
NUM_HELDOUT = 200
NUM_PREFERENCE = 1000
PREFERENCE_SEED = 4321  # its own stream, so the instruct records stay as they were
VOCAB_SIZE = 512
# Two or three items: four-item copies and reversals took a 3 M model twice as many steps to learn.
MIN_ITEMS, MAX_ITEMS = 2, 3

# Short, common English nouns: each should end up a single tokenizer piece.
# fmt: off
WORDS = [
    "cat", "dog", "sun", "red", "blue", "tree", "fish", "bird", "book", "cup", "hat", "box",
    "car", "bus", "pen", "key", "map", "egg", "milk", "rain", "snow", "star", "moon", "sea",
    "sky", "road", "door", "lamp", "bed", "ball", "cake", "bell", "frog", "duck", "goat", "lion",
    "bear", "wolf", "rose", "leaf", "rock", "sand", "ship", "coin", "ring", "drum", "kite", "boat",
]
# fmt: on
DIGITS = tuple("0123456789")


class Task(NamedTuple):
    """How to make one kind of record from a random list of items."""

    pool: Sequence[str]  # what the items are drawn from
    answer: Callable[[list[str]], list[str]]  # the output's items, from the input's items
    separator: str  # how items are joined into text
    in_input: bool  # items go in `input`, or are appended to the instruction (no `input`)


TASKS: dict[str, Task] = {
    "Repeat the words.": Task(WORDS, lambda xs: xs, " ", True),
    "Reverse the words.": Task(WORDS, lambda xs: xs[::-1], " ", True),
    "What is the first word?": Task(WORDS, lambda xs: xs[:1], " ", True),
    "What is the last word?": Task(WORDS, lambda xs: xs[-1:], " ", True),
    # Digits are written without spaces ("7391" -> "1379"); the tokenizer splits them one per id.
    "Sort the digits.": Task(DIGITS, sorted, "", True),
    # No `input`: exercises the template's without-input variant.
    "Repeat after me:": Task(WORDS, lambda xs: xs, " ", False),
}


def _draw(rng: random.Random) -> tuple[str, list[str]]:
    """A random task (its instruction) and the items to apply it to."""
    instruction = rng.choice(list(TASKS))
    task = TASKS[instruction]
    n = rng.randint(MIN_ITEMS, MAX_ITEMS)
    # Digits may repeat (sorting keeps duplicates); words are distinct so "first" and "last" differ.
    items = (
        [rng.choice(task.pool) for _ in range(n)]
        if task.pool is DIGITS
        else rng.sample(task.pool, n)
    )
    return instruction, items


def _make_record(rng: random.Random) -> dict[str, str]:
    instruction, items = _draw(rng)
    task = TASKS[instruction]
    text, output = task.separator.join(items), task.separator.join(task.answer(items))
    if task.in_input:
        return {"instruction": instruction, "input": text, "output": output}
    return {"instruction": f"{instruction} {text}", "input": "", "output": output}


def make_records(seed: int = SEED) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return `(train, heldout)`: distinct records, no (instruction, input) pair in both."""
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    records: list[dict[str, str]] = []
    while len(records) < NUM_TRAIN + NUM_HELDOUT:
        record = _make_record(rng)
        key = (record["instruction"], record["input"])
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records[NUM_HELDOUT:], records[:NUM_HELDOUT]


def _other_task(task: Task, items: list[str], rng: random.Random) -> list[list[str]]:
    """What other tasks would answer over the same items: right, but to another instruction."""
    if task.pool is DIGITS:  # sorting is the only digit task: the unsorted and reversed orders
        return [items, sorted(items, reverse=True)]
    return [other.answer(items) for other in TASKS.values() if other.pool is WORDS]


def _wrong_item(task: Task, items: list[str], rng: random.Random) -> list[list[str]]:
    """The right answer with one of its items swapped for one that the input does not hold."""
    answer = list(task.answer(items))
    answer[rng.randrange(len(answer))] = rng.choice([x for x in task.pool if x not in items])
    return [answer]


def _wrong_length(task: Task, items: list[str], rng: random.Random) -> list[list[str]]:
    """The right answer with one item too few (when it has several) or one too many."""
    answer = list(task.answer(items))
    if len(answer) > 1:
        return [answer[:-1]]
    return [[*answer, rng.choice([x for x in task.pool if x not in answer])]]


WRONG_KINDS = (_other_task, _wrong_item, _wrong_length)


def wrong_answer(instruction: str, items: list[str], rng: random.Random) -> str:
    """A plausible wrong answer, of a kind picked at random; never the right answer."""
    task = TASKS[instruction]
    right = task.separator.join(task.answer(items))
    for kind in rng.sample(WRONG_KINDS, len(WRONG_KINDS)):
        texts = dict.fromkeys(task.separator.join(answer) for answer in kind(task, items, rng))
        wrong = [text for text in texts if text != right]
        if wrong:
            return rng.choice(wrong)
    raise AssertionError("a wrong item always gives a wrong answer")


def make_preference_records(
    exclude: set[tuple[str, str]], seed: int = PREFERENCE_SEED
) -> list[dict[str, str]]:
    """DPO pairs over distinct prompts, none of whose (instruction, input) is in `exclude`.

    The prompt is the instruction with its items appended, as the "Repeat after me:" records
    write it: preference records have no `input` field.
    """
    rng = random.Random(seed)
    seen = set(exclude)
    records: list[dict[str, str]] = []
    while len(records) < NUM_PREFERENCE:
        instruction, items = _draw(rng)
        task = TASKS[instruction]
        text = task.separator.join(items)
        key = (instruction, text) if task.in_input else (f"{instruction} {text}", "")
        if key in seen:
            continue
        seen.add(key)
        records.append(
            {
                "prompt": f"{instruction} {text}",
                "chosen": task.separator.join(task.answer(items)),
                "rejected": wrong_answer(instruction, items, rng),
            }
        )
    return records


# Hand-written prose, so the tokenizer also knows ordinary English and not only the task texts.
# It uses the prompt templates' words in varied contexts on purpose: sentencepiece's unigram trainer
# only seeds pieces from substrings followed by more than one different character, so a word that
# only ever occurs inside the fixed Alpaca sentence would never become a piece of its own.
PROSE = """\
This corpus was written for tunegen, a tool that turns a short spec into a training recipe.
The recipe is a plain Python file that you can read, run and change by hand.
A small model learns to follow simple instructions after a few minutes of training.
Before training, the model answers at random; after training, most answers are right.
The data set holds short tasks: repeat the words, reverse them, or sort a few digits.
Each record has an instruction, an optional input and the output we want the model to write.
Every instruction describes a task, and every response completes a request.
The input provides further context, so an instruction is paired with an input when it needs one.
Write a short response. Write it appropriately, and write nothing further.
Below is a list of tasks; below it, the answers. Look below.
A request is a question; the response is its answer. Respond appropriately to each request.
The context matters: context describes what the task is about, and context provides hints.
Further down, the template describes the prompt. Read further.
The Alpaca prompt is made of these words: below, is, an, instruction, that, describes, task,
paired, with, input, provides, further, context, write, response, appropriately, completes, request.
Below, Write, Instruction, Input and Response are the words that begin its lines.
It says what the task is, what it describes, what it provides, and what is paired with what.
The answer is what the response completes; the rest is context that the prompt provides.
The Instruction, Input and Response headings start with ###, like a heading in Markdown.
Instruction: repeat the words. Input: the words. Response: the same words again.
Reverse means the last word comes first. Reverse them, then read them again.
Repeat means say it again. Repeat, then stop.
Sort means put in order. Sort them, smallest first.
What is the first word? What is the last word? What comes next?
The tokenizer splits text into pieces, and every piece has a number called its id.
Numbers are split into single digits, so 2024 becomes the digits 2, 0, 2 and 4.
Any character can still be written, because unknown text falls back to its bytes.
We train on the response and ignore the loss on the prompt, unless you ask otherwise.
The loss goes down quickly at first and then more slowly as the model improves.
Save a checkpoint now and then, so that a stopped run can resume where it left off.
A good test runs in seconds, uses a fixed seed and checks an exact number.
The cat sat on the mat while the dog slept by the door.
The sun was warm, the sky was blue, and the sea was calm.
A red kite flew over the sand and a small boat sailed past the rock.
In the evening the moon rose and the first star came out above the tree.
The children found a coin, a ring and a key in an old box under the bed.
She read a book, drank a cup of milk and ate a piece of cake.
He put on his hat, took his map and walked down the road to the ship.
The frog sat on a leaf, the duck swam in the pond, and the bird sang.
A lion, a bear and a wolf lived in the woods behind the hill.
The goat ate a rose from the garden, and nobody was happy about it.
When it started to rain, we ran inside and turned on the lamp.
In winter the snow covered the car, the bus stop and the red bell.
The fish swam away when the ball fell into the water.
Please write your answer on one line and keep it short.
What is the time? It is ten past four in the afternoon.
Where did you put the pen? It is on the table next to the drum.
Why is the sky blue? Because air scatters blue light more than red light.
How many eggs are in the box? There are six eggs in the box.
Who left the door open? The wind did, during the night.
Read the question, think about the input, and then write the response.
A short answer is often a better answer than a long one.
"""

SUBJECTS = [*WORDS, "man", "woman", "child", "teacher", "farmer", "friend"]
VERBS = ["sees", "likes", "finds", "has", "wants", "takes", "makes", "gives", "holds", "needs"]
ADJECTIVES = ["big", "small", "old", "new", "red", "blue", "green", "happy", "quiet", "fast"]
PLACES = ["in the house", "on the hill", "by the sea", "at school", "in the park", "near the road"]


def _simple_sentences(rng: random.Random, count: int) -> Iterator[str]:
    """Simple, grammatical sentences over the task words, so their pieces get enough weight."""
    for _ in range(count):
        subject, obj = rng.sample(SUBJECTS, 2)
        adjective, verb, place = rng.choice(ADJECTIVES), rng.choice(VERBS), rng.choice(PLACES)
        yield f"The {adjective} {subject} {verb} a {obj} {place}."


def make_corpus(seed: int = SEED, num_sentences: int = 3000) -> str:
    """The English corpus: the prose above plus generated simple sentences, one per line."""
    rng = random.Random(seed)
    return PROSE + "".join(f"{s}\n" for s in _simple_sentences(rng, num_sentences))


def _task_texts(records: Sequence[dict[str, str]]) -> Iterator[str]:
    """Training records rendered by every template, so prompt boilerplate becomes few pieces.

    A rendered prompt spans several lines; it is passed to the trainer as one sentence, so pieces
    learn what follows a newline (the first word of an instruction or input has no leading space).
    """
    for record in records:
        for template in PROMPT_TEMPLATES.values():
            prompt, response = template.format(record)
            yield prompt + response


def train_tokenizer(corpus: str, train_records: Sequence[dict[str, str]]) -> bytes:
    """Train the sentencepiece model and return its bytes.

    Unigram keeps whole frequent words without BPE's chain of intermediate merges, which matters
    when only 252 of the 512 ids are left after the 4 special tokens and the 256 byte pieces.
    Identity normalization and `remove_extra_whitespaces=False` make decode(encode(text)) == text
    for any text. The model is trained from an iterator into memory so its bytes do not record
    any file path.
    """
    sentences = [line for line in corpus.splitlines() if line] + list(_task_texts(train_records))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _write_jsonl(path: Path, records: Sequence[dict[str, str]]) -> None:
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text("".join(lines), encoding="utf-8")


def write_assets(root: Path, *, tokenizer: bool = True) -> None:
    """Write every output under `root`; `tokenizer=False` skips the (slower) tokenizer training."""
    train, heldout = make_records()
    corpus = make_corpus()
    data_dir, asset_dir = root / "specs" / "data", root / "runtime" / "assets" / "tiny"
    data_dir.mkdir(parents=True, exist_ok=True)
    asset_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(data_dir / "demo_train.jsonl", train)
    _write_jsonl(data_dir / "demo_heldout.jsonl", heldout)
    # Held-out prompts stay unseen by DPO too, so evaluation on them measures generalisation.
    held_out = {(r["instruction"], r["input"]) for r in heldout}
    _write_jsonl(data_dir / "demo_preference.jsonl", make_preference_records(held_out))
    (asset_dir / "corpus.txt").write_text(corpus, encoding="utf-8")
    if tokenizer:
        (asset_dir / "tokenizer.model").write_bytes(train_tokenizer(corpus, train))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    write_assets(args.root)
    print(f"wrote demo data, corpus and tokenizer under {args.root}")


if __name__ == "__main__":
    main()
