"""Token-exact episode sequences: ids in, ids out, never re-tokenizing what the policy produced.

An episode's sequence is built by appending:
  - the prompt (system + request, rendered by the chat template with the generation prompt),
  - each turn's generated ids exactly as the engine returned them (mask 1, rollout logprobs),
  - the template's turn close (`<|im_end|>\\n` for Qwen3) as template tokens (mask 0) unless the
    model generated its end-of-turn token itself (then only the rest of the close is appended),
  - each next user message, tokenized alone from the text the chat template renders for it
    (mask 0), ending with the generation prompt of the next assistant turn.

So `decode(token_ids)` equals the chat template's rendering of `messages` (the assistant
contents being the decoded generations), and the prompt prefix never changes across turns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be extended message by message."""


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


@dataclass
class ChatFormat:
    """What the chat template puts around an assistant turn, learned once from the tokenizer."""
    turn_close: str                 # text after an assistant message's content (Qwen3: "<|im_end|>\n")
    eos_ids: tuple[int, ...]        # ids that end a turn when the model generates them

    @staticmethod
    def of(tokenizer: Any) -> "ChatFormat":
        base = [{"role": "user", "content": "x"}]
        prompt = render(tokenizer, base, True)
        content = "REPLY-MARKER"
        full = render(tokenizer, base + [{"role": "assistant", "content": content}], False)
        if not full.startswith(prompt + content):
            raise TemplateError("the chat template does not render an assistant message as "
                                "generation prompt + content + close; rollout needs that (Qwen3-style) form")
        close = full[len(prompt) + len(content):]
        eos = []
        for tok in (getattr(tokenizer, "eos_token", None), "<|im_end|>"):
            if tok:
                i = tokenizer.convert_tokens_to_ids(tok)
                if isinstance(i, int) and i >= 0 and i not in eos:
                    eos.append(i)
        return ChatFormat(turn_close=close, eos_ids=tuple(eos))


@dataclass
class TokenSequence:
    """The growing token sequence of one episode, with its mask and rollout logprobs."""
    tokenizer: Any
    fmt: ChatFormat
    messages: list[dict[str, str]]
    token_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_len: int = 0

    @staticmethod
    def start(tokenizer: Any, fmt: ChatFormat, messages: list[dict[str, str]]) -> "TokenSequence":
        seq = TokenSequence(tokenizer, fmt, [dict(m) for m in messages])
        seq._append_template(render(tokenizer, seq.messages, True))
        seq.prompt_len = len(seq.token_ids)
        return seq

    def _append_template(self, text: str) -> None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        self.token_ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def add_generation(self, ids: list[int], logprobs: list[float]) -> str:
        """Append one assistant turn's generated ids as they are; close the turn; return its text.

        The text (the assistant message content) is the decode of the generated ids without the
        end-of-turn token, so the messages and the ids always agree.
        """
        if len(ids) != len(logprobs):
            raise ValueError(f"engine returned {len(ids)} token ids but {len(logprobs)} logprobs")
        self.token_ids += list(ids)
        self.mask += [1] * len(ids)
        self.logprobs += [float(x) for x in logprobs]
        ended = bool(ids) and ids[-1] in self.fmt.eos_ids
        content_ids = ids[:-1] if ended else ids
        text = self.tokenizer.decode(content_ids, skip_special_tokens=False)
        close = self.fmt.turn_close
        if ended:
            # The model wrote the end-of-turn token itself: append only what the template adds after it.
            eos_text = self.tokenizer.decode([ids[-1]], skip_special_tokens=False)
            close = close[len(eos_text):] if close.startswith(eos_text) else close
        before = render(self.tokenizer, self.messages, True)
        self.messages.append({"role": "assistant", "content": text})
        after = render(self.tokenizer, self.messages, False)
        if after != before + text + self.fmt.turn_close:
            raise TemplateError("the chat template re-renders earlier turns differently once an assistant "
                                "message is added; token-exact rollouts need an append-only template")
        if close:
            self._append_template(close)
        return text

    def add_user(self, content: str) -> None:
        """Append a user message (an observation) plus the next generation prompt, tokenized alone."""
        before = render(self.tokenizer, self.messages, False)
        self.messages.append({"role": "user", "content": content})
        after = render(self.tokenizer, self.messages, True)
        if not after.startswith(before):
            raise TemplateError("the chat template re-renders earlier messages when a user message is added")
        self._append_template(after[len(before):])

    def __len__(self) -> int:
        return len(self.token_ids)
