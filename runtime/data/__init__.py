"""Data loading for the generated recipes: files -> token ids -> padded batches."""

from tunegen.runtime.data.collate import IGNORE_INDEX, padded_collate
from tunegen.runtime.data.instruct import InstructDataset, read_instruct_examples
from tunegen.runtime.data.jsonl import (
    NumberedRecord,
    read_numbered_records,
    read_records,
    require_fields,
)
from tunegen.runtime.data.sampler import ResumableSampler
from tunegen.runtime.data.templates import PROMPT_TEMPLATES, PromptTemplate
from tunegen.runtime.data.text import TextDataset

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_TEMPLATES",
    "InstructDataset",
    "NumberedRecord",
    "PromptTemplate",
    "ResumableSampler",
    "TextDataset",
    "padded_collate",
    "read_instruct_examples",
    "read_numbered_records",
    "read_records",
    "require_fields",
]
