"""Incremental detokenization and stop strings, per request.

``Detokenizer.push(token)`` returns the new text a token completes. Byte-level BPE tokens can
end in the middle of a multi-byte character: the text of the window since the last complete
character is decoded again with each token, and nothing is emitted while it ends in U+FFFD, so a
client never sees half a character. With a fast tokenizer this runs in Rust (``tokenizers``'
``DecodeStream``, the same window: the previous emission's tokens as context), unless the
tokenizer cleans up decoded text (``clean_up_tokenization_spaces``); the windows are still
tracked here, for ``flush`` and as the fallback. ``StopStrings`` holds back the last
``len(longest stop) - 1`` characters, so a stop string split across tokens is still found, and
cuts the text before it.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class Detokenizer:
    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: the text before it was emitted
        self.read = 0  # ids already turned into emitted text
        # transformers' fast tokenizers decode with their Rust one, then maybe clean up spaces
        rust = getattr(tokenizer, "backend_tokenizer", None)
        fits = isinstance(rust, Tokenizer) and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self.rust: Tokenizer | None = rust if fits else None
        self.stream = DecodeStream(skip_special_tokens=skip_special_tokens) if fits else None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token: int) -> str:
        self.ids.append(token)
        if self.stream is not None and self.rust is not None:
            try:
                out = self.stream.step(self.rust, token)
            except Exception:  # a decoder whose text is not prefix-stable: decode windows here
                self.stream = None
            else:
                if out is None:
                    return ""
                self.prefix, self.read = self.read, len(self.ids)
                return out
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""  # a partial character (or a skipped special token): wait for more
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before) :]

    def flush(self) -> str:
        """The text still held back at the end of the request (may hold U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return now[len(before) :] if len(now) > len(before) else ""


class StopStrings:
    """Feed text with ``push``; it returns (text safe to emit, whether a stop string ended it)."""

    def __init__(self, stops: list[str], include: bool = False) -> None:
        """``include``: the text ends after the stop string, not before it."""
        self.stops = [s for s in stops if s]
        self.include = include
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.floor = 0  # a stop string must end past this: the text before it was not searched
        self.stopped = False

    def push(self, delta: str, final: bool = False, search: bool = True) -> tuple[str, bool]:
        """``search`` False: ``delta`` cannot hold or end a stop string (``min_tokens``'s text)."""
        if self.stopped:
            return "", True
        self.text += delta
        if not search:
            self.floor = len(self.text)
        start = max(0, self.sent - self.hold)
        found = ((self.text.find(s, max(start, self.floor - len(s) + 1)), len(s)) for s in self.stops)
        hits = [(i, length) for i, length in found if i >= 0] if search else []
        if hits:
            at, length = min(hits)
            cut = max(at + length if self.include else at, self.sent)
            out, self.sent, self.stopped = self.text[self.sent : cut], cut, True
            self.text = self.text[:cut]
            return out, True
        safe = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent : safe], safe
        return out, False
