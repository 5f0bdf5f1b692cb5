"""The text a reward is computed on: prompt + response as chat messages, then as text."""

from __future__ import annotations

from typing import Any

from ramo_stream.registry.model import format_text, to_messages
from ramo_stream.schemas import ChatMessage


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


class FakeTokenizer:
    """Records the messages it was asked to render; no hub, no vocabulary."""

    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        self.calls.append((messages, kwargs))
        return "|".join(f"<{m['role']}>{m['content']}" for m in messages)


# --------------------------------------------------------------------------- to_messages


def test_hh_transcript_becomes_turns_with_the_response_in_the_empty_last_turn() -> None:
    prompt = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"

    assert to_messages(prompt, "RESPONSE") == [
        user("a"),
        assistant("b"),
        user("c"),
        assistant("RESPONSE"),
    ]


def test_hh_transcript_without_the_leading_blank_line() -> None:
    assert to_messages("Human: a\n\nAssistant:", "R") == [user("a"), assistant("R")]


def test_multi_line_turns_keep_their_inner_newlines() -> None:
    prompt = "\n\nHuman: line 1\nline 2\n\nAssistant:"

    assert to_messages(prompt, "R") == [user("line 1\nline 2"), assistant("R")]


def test_plain_prompt_is_one_user_message() -> None:
    assert to_messages("  What is 2 + 2?\n", "4") == [user("What is 2 + 2?"), assistant("4")]


def test_human_marker_inside_a_plain_prompt_does_not_split_it() -> None:
    prompt = "Summarise this chat:\n\nHuman: hi\n\nAssistant: hello"

    assert to_messages(prompt, "R") == [user(prompt), assistant("R")]


def test_chat_messages_pass_through() -> None:
    prompt = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
    ]

    assert to_messages(prompt, "R") == [
        {"role": "system", "content": "be brief"},
        user("hi"),
        assistant("R"),
    ]


# --------------------------------------------------------------------------- format_text


def test_format_text_uses_the_chat_template_when_there_is_one() -> None:
    tok = FakeTokenizer(chat_template="{{ messages }}")

    text = format_text(tok, "\n\nHuman: a\n\nAssistant:", "R")

    assert text == "<user>a|<assistant>R"
    assert tok.calls == [([user("a"), assistant("R")], {"tokenize": False})]


def test_format_text_falls_back_to_a_plain_transcript() -> None:
    tok = FakeTokenizer(chat_template=None)
    prompt = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
    ]

    assert format_text(tok, prompt, "hello") == "System: be brief\nUser: hi\nAssistant: hello"
    assert format_text(tok, "hi", "hello") == "User: hi\nAssistant: hello"
    assert tok.calls == []


def test_format_text_without_a_chat_template_attribute_falls_back() -> None:
    assert format_text(object(), "hi", "hello") == "User: hi\nAssistant: hello"
