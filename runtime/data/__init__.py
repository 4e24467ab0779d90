"""Data loading for the generated recipes: files -> token ids -> padded batches."""

from tunegen.runtime.data.chat import (
    ChatDataset,
    chat_prompt_tokens,
    read_chat_examples,
    read_conversations,
)
from tunegen.runtime.data.chat_templates import (
    CHAT_TEMPLATE_NAMES,
    CHAT_TEMPLATES,
    TOKENIZER_TEMPLATE,
    ChatTemplate,
    Message,
    Segment,
    chat_segments,
    generation_prompt,
)
from tunegen.runtime.data.collate import (
    IGNORE_INDEX,
    grouped_padded_collate,
    packed_collate,
    padded_collate,
)
from tunegen.runtime.data.instruct import InstructDataset, read_instruct_examples
from tunegen.runtime.data.jsonl import (
    NumberedRecord,
    read_numbered_records,
    read_records,
    require_fields,
)
from tunegen.runtime.data.packing import PackedDataset, PackSampler, best_fit_decreasing
from tunegen.runtime.data.preference import PreferenceDataset, preference_collate
from tunegen.runtime.data.sampler import (
    LengthBucketSampler,
    ResumableSampler,
    ShardedSampler,
    TokenBudgetSampler,
)
from tunegen.runtime.data.templates import PROMPT_TEMPLATES, PromptTemplate
from tunegen.runtime.data.text import TextDataset

__all__ = [
    "CHAT_TEMPLATES",
    "CHAT_TEMPLATE_NAMES",
    "IGNORE_INDEX",
    "PROMPT_TEMPLATES",
    "TOKENIZER_TEMPLATE",
    "ChatDataset",
    "ChatTemplate",
    "InstructDataset",
    "LengthBucketSampler",
    "Message",
    "NumberedRecord",
    "PackSampler",
    "PackedDataset",
    "PreferenceDataset",
    "PromptTemplate",
    "ResumableSampler",
    "Segment",
    "ShardedSampler",
    "TextDataset",
    "TokenBudgetSampler",
    "best_fit_decreasing",
    "chat_prompt_tokens",
    "chat_segments",
    "generation_prompt",
    "grouped_padded_collate",
    "packed_collate",
    "padded_collate",
    "preference_collate",
    "read_chat_examples",
    "read_conversations",
    "read_instruct_examples",
    "read_numbered_records",
    "read_records",
    "require_fields",
]
