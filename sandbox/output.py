"""Turning a command's raw output bytes into the observation the model sees.

Every backend feeds the bytes it reads into an `OutputBuffer` (which keeps only a bounded head and
tail, so 1 GB of output costs a few KiB of memory) and renders them with `format_output`, the one
pure function that decodes, neutralises terminal control sequences and inserts the cut marker.
"""
from __future__ import annotations

import re

# CSI (colours, cursor moves), OSC (window titles, hyperlinks; ended by BEL or ESC \), and the
# remaining two-byte ESC sequences. Matched on decoded text.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"          # CSI ... final byte
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL | ST (unterminated: up to the next ESC)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"    # DCS/SOS/PM/APC strings
    r"|\x1b[ -/]*[0-~]?"                 # other ESC sequences, or a lone ESC
)
# C0 controls except \t and \n (\r and \b are handled first), DEL, and the C1 range that some
# terminals still interpret.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


def clean_text(data: bytes) -> str:
    """Decode (invalid UTF-8 -> U+FFFD) and strip what a terminal would interpret, not show."""
    text = data.decode("utf-8", errors="replace")
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    if "\r" in text:
        # A progress bar rewrites its line with \r: keep what the terminal finally shows.
        text = "\n".join(_last_segment(line) for line in text.split("\n"))
    return _CONTROL.sub("", text)


def _last_segment(line: str) -> str:
    parts = [p for p in line.split("\r") if p]
    return parts[-1] if parts else ""


def omitted_marker(n: int) -> str:
    return f"\n[... {n} bytes omitted ...]\n"


def format_output(head: bytes, tail: bytes = b"", *, total: int | None = None,
                  limit: int) -> tuple[str, bool]:
    """Render captured output as (text, truncated).

    `head` is the first bytes of the stream, `tail` the last ones, `total` the stream's full size
    (default: len(head) + len(tail), i.e. nothing was dropped yet). At most `limit` bytes are
    kept: the first limit//2 and the last limit - limit//2, with a marker saying how many bytes
    were dropped in between.
    """
    if total is None:
        total = len(head) + len(tail)
    head_n = limit // 2
    tail_n = limit - head_n
    if total <= limit:
        return clean_text(head + tail), False
    kept_head = (head + tail)[:head_n] if len(head) < head_n else head[:head_n]
    kept_tail = tail[-tail_n:] if tail_n else b""
    if len(tail) < tail_n:  # the tail is short: part of it lives at the end of `head`
        kept_tail = (head + tail)[-tail_n:]
    omitted = total - len(kept_head) - len(kept_tail)
    return clean_text(kept_head) + omitted_marker(omitted) + clean_text(kept_tail), True


class OutputBuffer:
    """Accumulates a byte stream keeping only the head and tail that `format_output` will show."""

    def __init__(self, limit: int):
        self.limit = limit
        self._head_n = limit // 2
        self._tail_n = limit - self._head_n
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data)
        self.total += len(data)
        room = self._head_n - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if len(data) >= self._tail_n:
            self.tail = bytearray(data[len(data) - self._tail_n:])
        elif data:
            self.tail += data
            if len(self.tail) > 2 * self._tail_n:  # trim rarely: amortised O(1) per byte
                del self.tail[:-self._tail_n]

    def render(self) -> tuple[str, bool]:
        return format_output(bytes(self.head), bytes(self.tail[-self._tail_n:] if self._tail_n else b""),
                             total=self.total, limit=self.limit)
