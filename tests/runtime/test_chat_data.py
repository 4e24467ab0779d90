"""Chat data: rendering conversations, the loss mask on the replies, parity with transformers.

The tokenizers are tiny BPEs built here with the `tokenizers` library, given the special tokens of
each template and saved as Hugging Face dirs; `HFTokenizer` reads them, and
`AutoTokenizer.apply_chat_template` is the reference for the ids.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tunegen.runtime.data.chat import ChatDataset, chat_prompt_tokens, read_chat_examples
from tunegen.runtime.data.chat_templates import (
    CHAT_TEMPLATE_NAMES,
    CHAT_TEMPLATES,
    Segment,
    chat_segments,
    generation_prompt,
)
from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.data.templates import ALPACA
from tunegen.runtime.errors import DataError, TokenizerError
from tunegen.runtime.tokenizers.hf_json import HFTokenizer

# -- the official templates, as the checkpoints ship them in tokenizer_config.json ---------------

# Meta-Llama-3-8B-Instruct.
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# ChatML as OpenHermes-2.5 and others ship it (Qwen's adds a default system message).
CHATML_JINJA = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ChatML with transformers' `{% generation %}` markers around the replies (for its assistant mask).
CHATML_GENERATION_JINJA = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{message['content'] + '<|im_end|>'}}{% endgeneration %}"
    "{% else %}{{message['content'] + '<|im_end|>'}}{% endif %}"
    "{{'\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Mistral-7B-Instruct-v0.2 (the revision that folds a system message into the first user turn).
MISTRAL_JINJA = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# -- data ----------------------------------------------------------------------------------------

SYSTEM = "You are a terse assistant."
REPLIES = ["It is 4.", "Paris, of course."]
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": REPLIES[0]},
    {"role": "user", "content": "And the capital of France?"},
    {"role": "assistant", "content": REPLIES[1]},
]
SHAREGPT = [
    {
        "from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]],
        "value": m["content"],
    }
    for m in CONVERSATION
]
END_OF_TURN = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "mistral": "</s>", "alpaca": "</s>"}

CORPUS = [
    "You are a terse assistant. What is 2 plus 2? It is 4. And the capital of France? "
    "Paris, of course. Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request. Instruction Response system user assistant INST"
] * 20


def _save(
    folder: Path,
    *,
    specials: list[str],
    bos: str | None,
    eos: str,
    chat_template: str | None,
    metaspace: bool = False,
) -> Path:
    """Train a tiny BPE with `specials` as added tokens and save it as a Hugging Face dir.

    Byte-level like Llama 3's and Qwen's, or Metaspace (sentencepiece-style "▁" words, no prefix
    after a special token) like Mistral's. `chat_template` goes into tokenizer_config.json, where
    the checkpoints keep it.
    """
    backend = Backend(models.BPE(unk_token="<unk>" if metaspace else None))
    if metaspace:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        backend.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
        alphabet = sorted(set(string.printable))  # no byte fallback: every character we use
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=alphabet
    )
    backend.train_from_iterator(CORPUS, trainer)
    if bos is not None:  # the post-processor starts every sequence with BOS, as Llama's does
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    fast.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if chat_template is not None:
        config["chat_template"] = chat_template
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tokenizer dirs, named by the built-in template they suit, and variants."""
    root = tmp_path_factory.mktemp("tokenizers")
    llama3 = {"specials": LLAMA3_SPECIALS, "bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}
    chatml = {"specials": CHATML_SPECIALS, "bos": None, "eos": "<|im_end|>"}
    mistral = {"specials": MISTRAL_SPECIALS, "bos": "<s>", "eos": "</s>", "metaspace": True}
    return {
        "llama3": _save(root / "llama3", chat_template=LLAMA3_JINJA, **llama3),
        "chatml": _save(root / "chatml", chat_template=CHATML_JINJA, **chatml),
        "mistral": _save(root / "mistral", chat_template=MISTRAL_JINJA, **mistral),
        "alpaca": _save(root / "alpaca", chat_template=None, **mistral),
        "chatml_generation": _save(
            root / "chatml_generation", chat_template=CHATML_GENERATION_JINJA, **chatml
        ),
    }


@pytest.fixture(scope="module")
def toks(dirs: dict[str, Path]) -> dict[str, HFTokenizer]:
    return {name: HFTokenizer(path) for name, path in dirs.items()}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])


def loss_runs(tok: HFTokenizer, item: dict[str, list[int]]) -> list[str]:
    """The decoded text of each maximal run of positions that carry the loss."""
    runs, current = [], []
    for token, label in zip(item["tokens"], item["labels"], strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token  # unshifted labels
            current.append(token)
    if current:
        runs.append(current)
    return [tok.decode(run, skip_special_tokens=False) for run in runs]


def error(path: Path, message: str) -> str:
    """A regex matching exactly `'<path>:' + message`."""
    return f"^{re.escape(str(path))}:{re.escape(message)}$"


# -- which tokens carry the loss -----------------------------------------------------------------


@pytest.mark.parametrize("template", ["llama3", "chatml", "mistral", "alpaca"])
def test_loss_is_exactly_on_the_replies_and_their_end_tokens(
    template: str, toks: dict[str, HFTokenizer], chat_file: Path
) -> None:
    tok = toks[template]
    item = ChatDataset(tok, source=chat_file, template=template, max_seq_len=512)[0]
    end = END_OF_TURN[template]
    assert loss_runs(tok, item) == [REPLIES[0] + end, REPLIES[1] + end]
    assert CHAT_TEMPLATES[template].end_of_turn.format(eos="</s>") == end
    # The conversation is tokenized as one text: the ids are those of the whole rendering.
    text = "".join(s.text for s in chat_segments(CONVERSATION, template, **_specials(tok)))
    assert item["tokens"] == tok.encode(text, add_bos=False, add_eos=False)
    assert tok.decode(item["tokens"], skip_special_tokens=False) == text


def test_loss_positions_llama3_spelled_out(toks: dict[str, HFTokenizer], chat_file: Path) -> None:
    tok = toks["llama3"]
    item = ChatDataset(tok, source=chat_file, template="llama3", max_seq_len=512)[0]
    tokens = item["tokens"]
    header_end, eot = tok.token_to_id("<|end_header_id|>"), tok.token_to_id("<|eot_id|>")
    # Each reply starts after its header ("<|end_header_id|>" then "\n\n") and ends with its
    # <|eot_id|>, the 3rd and the 5th of the conversation.
    eots = [i for i, t in enumerate(tokens) if t == eot]
    headers = [i for i, t in enumerate(tokens) if t == header_end]
    gap = len(tok.encode("\n\n", add_bos=False, add_eos=False))
    expected = {
        *range(headers[2] + 1 + gap, eots[2] + 1),
        *range(headers[4] + 1 + gap, eots[4] + 1),
    }
    assert {i for i, label in enumerate(item["labels"]) if label != IGNORE_INDEX} == expected
    assert tokens[0] == tok.bos_id and len(eots) == 5 == len(headers)


def test_llama3_trims_contents_as_its_template_does(toks: dict[str, HFTokenizer]) -> None:
    messages = [{"role": "user", "content": " hi \n"}, {"role": "assistant", "content": "\n4. "}]
    text = "".join(s.text for s in chat_segments(messages, "llama3", **_specials(toks["llama3"])))
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|>"
    )


def test_alpaca_single_turn_reads_as_the_alpaca_prompt(toks: dict[str, HFTokenizer]) -> None:
    messages = [
        {"role": "user", "content": "Name a city."},
        {"role": "assistant", "content": "Rome"},
    ]
    segments = chat_segments(messages, "alpaca", **_specials(toks["alpaca"]))
    text = "".join(s.text for s in segments)
    assert text == "<s>" + ALPACA.prompt("Name a city.") + "Rome</s>"
    assert [s.text for s in segments if s.carries_loss] == ["Rome</s>"]


def test_train_on_input_learns_everything_but_bos(
    toks: dict[str, HFTokenizer], chat_file: Path
) -> None:
    for template in ("llama3", "chatml"):
        tok = toks[template]
        item = ChatDataset(
            tok, source=chat_file, template=template, max_seq_len=512, train_on_input=True
        )[0]
        plain = ChatDataset(tok, source=chat_file, template=template, max_seq_len=512)[0]
        assert item["tokens"] == plain["tokens"]
        if template == "llama3":  # starts with BOS, which is given, never predicted
            assert item["tokens"][0] == tok.bos_id
            assert item["labels"] == [IGNORE_INDEX, *item["tokens"][1:]]
        else:  # chatml tokenizers have no BOS
            assert item["labels"] == item["tokens"]


# -- parity with transformers --------------------------------------------------------------------


@pytest.mark.parametrize("template", ["llama3", "chatml", "mistral"])
def test_builtin_templates_match_the_official_jinja(
    template: str, dirs: dict[str, Path], toks: dict[str, HFTokenizer], chat_file: Path
) -> None:
    reference = AutoTokenizer.from_pretrained(dirs[template])
    tok = toks[template]
    segments = chat_segments(CONVERSATION, template, **_specials(tok))
    assert "".join(s.text for s in segments) == reference.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    item = ChatDataset(tok, source=chat_file, template=template, max_seq_len=512)[0]
    assert item["tokens"] == reference.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    # And the jinja template itself, run by tunegen, gives the same item.
    ours = ChatDataset(tok, source=chat_file, template="tokenizer", max_seq_len=512)[0]
    assert ours == item
    # The prompt for generation: everything up to the last reply.
    prompt = CONVERSATION[:-1]
    expected = reference.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    assert chat_prompt_tokens(tok, prompt, template=template) == expected["input_ids"]
    assert chat_prompt_tokens(tok, prompt, template="tokenizer") == expected["input_ids"]


def test_sentencepiece_style_tokenizer_is_read_as_one_text(toks: dict[str, HFTokenizer]) -> None:
    """Why the boundaries come from prefixes: alone, each piece would start with a "▁"."""
    tok = toks["mistral"]
    segments = [s for s in chat_segments(CONVERSATION, "mistral", **_specials(tok)) if s.text]
    pieces = [i for s in segments for i in tok.encode(s.text, add_bos=False, add_eos=False)]
    whole = tok.encode("".join(s.text for s in segments), add_bos=False, add_eos=False)
    assert len(pieces) > len(whole)


# -- the tokenizer's own template ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["chatml", "llama3", "chatml_generation"])
def test_tokenizer_template_learns_the_replies_only(
    name: str, dirs: dict[str, Path], toks: dict[str, HFTokenizer], chat_file: Path
) -> None:
    tok = toks[name]
    item = ChatDataset(tok, source=chat_file, template="tokenizer", max_seq_len=512)[0]
    reference = AutoTokenizer.from_pretrained(dirs[name])
    assert item["tokens"] == reference.apply_chat_template(CONVERSATION)["input_ids"]
    end = "<|eot_id|>" if name == "llama3" else "<|im_end|>"
    assert loss_runs(tok, item) == [REPLIES[0] + end, REPLIES[1] + end]


def test_tokenizer_template_segments(toks: dict[str, HFTokenizer]) -> None:
    segments = chat_segments(CONVERSATION[1:3], "tokenizer", **_specials(toks["chatml"]))
    assert segments == [
        Segment("<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n", False),
        Segment("It is 4.<|im_end|>", True),
        Segment("\n", False),
    ]


def test_generation_prompt_text(toks: dict[str, HFTokenizer]) -> None:
    specials = _specials(toks["chatml"])
    question = [{"role": "user", "content": "Hi?"}]
    expected = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert generation_prompt(question, "chatml", **specials) == expected
    assert generation_prompt(question, "tokenizer", **specials) == expected
    mistral = _specials(toks["mistral"])
    assert generation_prompt(question, "mistral", **mistral) == "<s>[INST] Hi? [/INST]"


def test_template_that_rewrites_earlier_turns_is_an_error(
    tmp_path: Path, toks: dict[str, HFTokenizer], chat_file: Path
) -> None:
    # Like templates that render the last reply differently from earlier ones.
    rewriting = CHATML_JINJA.replace(
        "message['content'] +", "message['content'] + ('' if loop.last else '.') +"
    )
    folder = _save(
        tmp_path / "rewriting",
        specials=CHATML_SPECIALS,
        bos=None,
        eos="<|im_end|>",
        chat_template=rewriting,
    )
    with pytest.raises(
        DataError,
        match=error(
            chat_file,
            "1: the tokenizer's chat template renders message 3 (an assistant reply) differently "
            "depending on what follows it, so the reply cannot be located; use a built-in template",
        ),
    ):
        ChatDataset(HFTokenizer(folder), source=chat_file, template="tokenizer", max_seq_len=512)


def test_template_exception_names_the_record(tmp_path: Path, toks: dict[str, HFTokenizer]) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": CONVERSATION}, {"messages": [CONVERSATION[2], CONVERSATION[1]]}],
    )
    with pytest.raises(
        DataError,
        match=error(
            path,
            "2: the tokenizer's chat template failed: After the optional system message, "
            "conversation roles must alternate user/assistant/user/assistant/...",
        ),
    ):
        ChatDataset(toks["mistral"], source=path, template="tokenizer", max_seq_len=512)
    with pytest.raises(
        DataError,
        match=error(
            path,
            "2: chat template 'mistral' needs user and assistant messages to alternate, starting "
            "with user (message 1 is assistant, expected user)",
        ),
    ):
        ChatDataset(toks["mistral"], source=path, template="mistral", max_seq_len=512)


def test_tokenizer_without_chat_template(toks: dict[str, HFTokenizer], chat_file: Path) -> None:
    message = (
        "chat template 'tokenizer' needs the tokenizer's own chat template (chat_template.jinja, "
        "or chat_template in tokenizer_config.json); this tokenizer has none, so pick a built-in "
        "template: llama3, chatml, mistral or alpaca"
    )
    with pytest.raises(TokenizerError, match=f"^{re.escape(message)}$"):
        ChatDataset(toks["alpaca"], source=chat_file, template="tokenizer", max_seq_len=512)


def test_builtin_template_needs_its_special_tokens(
    toks: dict[str, HFTokenizer], chat_file: Path
) -> None:
    with pytest.raises(
        TokenizerError,
        match=re.escape(
            "chat template 'chatml' needs the special token '<|im_start|>', which the tokenizer "
            "does not have; use template: tokenizer or another template"
        ),
    ):
        ChatDataset(toks["llama3"], source=chat_file, template="chatml", max_seq_len=512)


def test_unknown_template(toks: dict[str, HFTokenizer], chat_file: Path) -> None:
    assert CHAT_TEMPLATE_NAMES == ("alpaca", "chatml", "llama3", "mistral", "tokenizer")
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        ChatDataset(toks["chatml"], source=chat_file, template="vicuna", max_seq_len=512)


# -- records -------------------------------------------------------------------------------------


def test_sharegpt_and_openai_forms_give_the_same_items(
    tmp_path: Path, toks: dict[str, HFTokenizer]
) -> None:
    openai = write_jsonl(tmp_path / "openai.jsonl", [{"messages": CONVERSATION}] * 2)
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"conversations": SHAREGPT, "id": 7}] * 2, indent=1))
    for template in ("llama3", "tokenizer"):
        a = ChatDataset(toks["llama3"], source=openai, template=template, max_seq_len=512)
        b = ChatDataset(toks["llama3"], source=sharegpt, template=template, max_seq_len=512)
        assert [a[i] for i in range(2)] == [b[i] for i in range(2)]


def test_read_chat_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": SHAREGPT}])
    assert read_chat_examples(path) == [(CONVERSATION[:4], REPLIES[1])]


def test_truncation_and_dropped_records(tmp_path: Path, toks: dict[str, HFTokenizer]) -> None:
    tok = toks["chatml"]
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"messages": CONVERSATION},
            {"messages": [{"role": "user", "content": "What is 2 plus 2? " * 30}, CONVERSATION[2]]},
        ],
    )
    full = ChatDataset(tok, source=path, template="chatml", max_seq_len=4096)
    assert (len(full), full.num_dropped) == (2, 0)
    first_reply = next(i for i, label in enumerate(full[0]["labels"]) if label != IGNORE_INDEX)
    cut = first_reply + 2  # the first reply's first two tokens survive
    short = ChatDataset(
        tok, source=path, template="chatml", max_seq_len=cut, max_dropped_fraction=0.5
    )
    assert (len(short), short.num_dropped) == (1, 1)
    assert short[0]["tokens"] == full[0]["tokens"][:cut]
    assert short[0]["labels"] == full[0]["labels"][:cut]
    with pytest.raises(
        DataError,
        match=f"^data file '{re.escape(str(path))}': all 2 records are longer than max_seq_len=5 "
        "before their first assistant reply$",
    ):
        ChatDataset(tok, source=path, template="chatml", max_seq_len=5)


GOOD = {"messages": CONVERSATION[1:3]}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"text": "hi"},
            "a chat record needs a 'messages' or a 'conversations' field, found neither",
        ),
        (
            {"messages": [], "conversations": []},
            "a chat record needs a 'messages' or a 'conversations' field, found both",
        ),
        ({"messages": []}, "empty conversation ('messages' has no messages)"),
        ({"conversations": []}, "empty conversation ('conversations' has no messages)"),
        ({"messages": {"role": "user"}}, "field 'messages' must be an array, got object"),
        ({"messages": ["hi"]}, "message 1 must be an object, got string"),
        (
            {"messages": [CONVERSATION[1], {"role": "bot", "content": "x"}]},
            "message 2: unknown role 'bot' (known: system, user, assistant)",
        ),
        (
            {"conversations": [{"from": "user", "value": "x"}]},
            "message 1: unknown role 'user' (known: system, human, gpt)",
        ),
        ({"messages": [{"role": "user"}]}, "message 1 has no 'content'"),
        ({"conversations": [{"value": "x"}]}, "message 1 has no 'from'"),
        (
            {"messages": [CONVERSATION[1], {"role": "assistant", "content": ["a", "b"]}]},
            "message 2: 'content' must be a string, got array",
        ),
        (
            {"conversations": [{"from": "human", "value": None}]},
            "message 1: 'value' must be a string, got null",
        ),
    ],
)
def test_bad_records_name_their_line(
    tmp_path: Path, toks: dict[str, HFTokenizer], record: dict, message: str
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=error(path, "3: " + message)):
        ChatDataset(toks["chatml"], source=path, template="chatml", max_seq_len=512)


def test_every_bad_record_is_reported_in_file_order(
    tmp_path: Path, toks: dict[str, HFTokenizer]
) -> None:
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps(GOOD),
        json.dumps({"messages": [{"content": "hi"}]}),  # a message without a role
        "{oops",
        json.dumps(GOOD),
        json.dumps({"messages": "hi"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = "\n".join(
        [
            f"{path}:2: message 1 has no 'role'",
            f"{path}:3: not valid JSON (Expecting property name enclosed in double quotes)",
            f"{path}:5: field 'messages' must be an array, got string",
        ]
    )
    with pytest.raises(DataError, match=f"^{re.escape(expected)}$"):
        ChatDataset(toks["chatml"], source=path, template="chatml", max_seq_len=512)


def test_a_conversation_without_a_reply_is_dropped_and_counted(
    tmp_path: Path, toks: dict[str, HFTokenizer]
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"messages": CONVERSATION[:2]}, GOOD])
    ds = ChatDataset(
        toks["chatml"], source=path, template="chatml", max_seq_len=512, max_dropped_fraction=0.5
    )
    assert (len(ds), ds.lines) == (2, [1, 3])
    assert ds.dropped == [(2, "the conversation has no assistant message, so nothing to learn")]
    # Above the limit (the default 1%), the error lists the dropped records.
    with pytest.raises(DataError, match=r"1 of 3 records \(33\.3%\) train nothing") as raised:
        ChatDataset(toks["chatml"], source=path, template="chatml", max_seq_len=512)
    assert str(raised.value).endswith(
        f"\n{path}:2: the conversation has no assistant message, so nothing to learn"
    )
    # With train_on_input the user turns carry loss, so nothing is dropped.
    ds = ChatDataset(
        toks["chatml"], source=path, template="chatml", max_seq_len=512, train_on_input=True
    )
    assert (len(ds), ds.num_dropped) == (3, 0)


def test_mistral_takes_a_system_message_only_first(
    tmp_path: Path, toks: dict[str, HFTokenizer]
) -> None:
    messages = [*CONVERSATION[1:3], {"role": "system", "content": "Be kind."}, *CONVERSATION[3:]]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": messages}])
    with pytest.raises(
        DataError,
        match=error(
            path,
            "1: chat template 'mistral' takes a system message only as the first message "
            "(message 3 is one)",
        ),
    ):
        ChatDataset(toks["mistral"], source=path, template="mistral", max_seq_len=512)


def _specials(tok: HFTokenizer) -> dict[str, str | None]:
    """The keyword arguments of `chat_segments` for `tok`'s special tokens and jinja template."""

    def text(token_id: int | None) -> str | None:
        return None if token_id is None else tok.decode([token_id], skip_special_tokens=False)

    return {
        "bos_token": text(tok.bos_id),
        "eos_token": text(tok.eos_id),
        "chat_template": tok.chat_template,
    }
