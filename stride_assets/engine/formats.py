"""Instruction and chat rows as scored texts: the full string and where its scored part begins.

A row of any format (``FormatFields.format``) becomes ``(text, completion_start)``: the whole
string the model reads and the character offset from which its tokens are scored (0: every token,
plain text). ``lm.encode`` turns the offset into a per-token ``loss_mask`` with the fast
tokenizer's offset mapping; every loss weights only the targets inside it.

- ``prompt_completion``: ``prompt + completion`` as they are (no separator is added: put the space
  or newline you train with into the data); the completion is scored.
- ``messages``: a list of ``{role, content}`` whose last message is the assistant's; that last
  assistant message (and what the template puts after it, e.g. an end-of-turn token) is scored,
  earlier turns are context. Rendered by the tokenizer's chat template when it has one
  (``render_template``), else by the fallback ``"<role>: content"`` lines joined by newlines
  (``render_fallback``). The corpus frame stores the fallback text (the default tokenizer is trained
  on it, TF-IDF and the reports read it) and the messages as canonical JSON (``messages`` column),
  so a tokenizer with a template renders the same rows the same way at encode time.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import polars as pl

from stride_assets.engine.errors import StrideInputError

FORMATS = ("text", "prompt_completion", "messages")
ASSISTANT = "assistant"


def check_messages(value: Any, where: str) -> list[dict[str, str]]:
    """``value`` as a list of ``{role, content}`` string pairs whose last one is a non-empty assistant message."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise StrideInputError(f"{where}: messages must be a list of {{role, content}}, got a string that is "
                                   "not JSON") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise StrideInputError(f"{where}: messages must be a non-empty list of {{role, content}}, got "
                               f"{type(value).__name__}")
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise StrideInputError(f"{where}: message {j} must be {{role: str, content: str}}, got {str(msg)[:80]!r}")
        out.append({"role": msg["role"], "content": msg["content"]})
    if out[-1]["role"] != ASSISTANT:
        raise StrideInputError(f"{where}: the last message must be the assistant's (the scored completion), "
                               f"got role {out[-1]['role']!r}")
    if not out[-1]["content"].strip():
        raise StrideInputError(f"{where}: the last assistant message is empty (nothing to score)")
    return out


def prompt_completion(prompt: str, completion: str, where: str) -> tuple[str, int]:
    """``prompt + completion`` (outer whitespace stripped) and the completion's start."""
    if not completion.strip():
        raise StrideInputError(f"{where}: the completion is empty (nothing to score)")
    prompt, completion = prompt.lstrip(), completion.rstrip()
    if not prompt:
        completion = completion.lstrip()
    return prompt + completion, len(prompt)


def render_fallback(messages: Sequence[dict[str, str]]) -> tuple[str, int]:
    """``"<role>: content"`` lines joined by newlines; the scored part starts at the last message's content."""
    head = "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1])
    prefix = f"{head}{messages[-1]['role']}: "
    return prefix + messages[-1]["content"], len(prefix)


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_template(tokenizer: Any, messages: Sequence[dict[str, str]], where: str = "messages") -> tuple[str, int]:
    """The chat template's rendering and where the last assistant message begins in it.

    The scored part starts after the rendering of the earlier turns with the generation prompt
    (the template's own assistant header); a template whose full rendering does not extend that
    prefix is located by the last message's content instead.
    """
    messages = list(messages)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prefix = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True) \
        if len(messages) > 1 else ""
    if full.startswith(prefix):
        return full, len(prefix)
    start = full.rfind(messages[-1]["content"])
    if start < 0:
        raise StrideInputError(f"{where}: the chat template does not render the last assistant message's content")
    return full, start


def canonical(messages: Sequence[dict[str, str]]) -> str:
    """The messages as a stable JSON string (what the corpus frame stores)."""
    return json.dumps(list(messages), ensure_ascii=False, sort_keys=True)


def query_value(value: Any, where: str) -> tuple[str, int, str | None]:
    """One query given inline (a prompt entry, ``stride attribute``): a string (all scored), a
    ``{prompt, completion}`` or a ``{messages}`` mapping -> (text, completion_start, messages JSON or None)."""
    if isinstance(value, str):
        if not value.strip():
            raise StrideInputError(f"{where} must be a non-empty string")
        return value, 0, None
    if isinstance(value, dict) and "messages" in value:
        messages = check_messages(value["messages"], where)
        return (*render_fallback(messages), canonical(messages))
    if isinstance(value, dict) and {"prompt", "completion"} <= set(value):
        if not all(isinstance(value[k], str) for k in ("prompt", "completion")):
            raise StrideInputError(f"{where}: prompt and completion must be strings")
        return (*prompt_completion(value["prompt"], value["completion"], where), None)
    raise StrideInputError(f"{where} must be a string, a {{prompt, completion}} or a {{messages}} mapping, got "
                           f"{str(value)[:80]!r}")


def parse_query_arg(text: str) -> str | dict[str, Any]:
    """A command-line query: a JSON object with ``prompt`` and ``completion`` or with ``messages`` is that
    mapping (``query_value``); any other text is a plain query."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, dict) and ("messages" in value or {"prompt", "completion"} <= set(value)):
            return value
    return text


def scored_texts(frame: pl.DataFrame, tokenizer: Any) -> tuple[list[str], list[int] | None]:
    """The texts to encode and their completion starts (None: plain text, every token scored).

    Rows with messages are rendered by the tokenizer's chat template when it has one (deterministic
    for a tokenizer); otherwise the stored (fallback) text and start are used as they are.
    """
    texts = frame["text"].to_list()
    if "completion_start" not in frame.columns:
        return texts, None
    starts = [int(s or 0) for s in frame["completion_start"].to_list()]
    if "messages" in frame.columns and has_template(tokenizer):
        for i, raw in enumerate(frame["messages"].to_list()):
            if raw is not None:
                texts[i], starts[i] = render_template(tokenizer, check_messages(raw, f"row {i}"), f"row {i}")
    return texts, starts if any(starts) else None
