"""Unit tests of the shared output handling (sandbox.output) and the sentinel framing."""
import random

from sandbox.output import OutputBuffer, clean_text, format_output
from sandbox.shell import _Framer


def test_small_output_is_kept_whole():
    text, truncated = format_output(b"hello\nworld\n", limit=256)
    assert (text, truncated) == ("hello\nworld\n", False)


def test_truncation_keeps_head_and_tail_with_marker():
    data = "".join(f"{i}\n" for i in range(10000)).encode()
    text, truncated = format_output(data, limit=256)
    assert truncated
    head, _, rest = text.partition("\n[... ")
    omitted, _, tail = rest.partition(" bytes omitted ...]\n")
    assert int(omitted) == len(data) - 256
    assert head.startswith("0\n1\n2\n") and tail.endswith("9998\n9999\n")
    assert len(head) == 128 and len(tail) == 128
    assert data.startswith(head.encode()) and data.endswith(tail.encode())


def test_invalid_utf8_is_replaced_not_raised():
    text, _ = format_output(b"ok \xff\xfe\xc3 end", limit=256)
    assert text.startswith("ok ") and text.endswith(" end") and "\ufffd" in text


def test_control_sequences_are_stripped():
    raw = (b"\x1b[31mred\x1b[0m plain\x1b]0;title\x07 \x1b[2J\x1b[Hafter\n"
           b"bell\x07 nul\x00 bs\x08 esc\x1bc tab\tkept\n")
    assert clean_text(raw) == "red plain after\nbell nul bs esc tab\tkept\n"


def test_carriage_returns_keep_what_the_terminal_shows():
    assert clean_text(b"10%\r50%\r100%\ndone\r\n") == "100%\ndone\n"


def test_binary_output_decodes_to_printable_text():
    rng = random.Random(0)
    data = bytes(rng.randrange(256) for _ in range(5000))
    text, truncated = format_output(data, limit=1024)
    assert truncated
    assert all(c in "\n\t" or (ord(c) >= 0x20 and not 0x7f <= ord(c) <= 0x9f) for c in text)


def test_streaming_buffer_matches_whole_input():
    rng = random.Random(1)
    for size in (0, 10, 255, 256, 257, 1000, 50_000):
        data = bytes(rng.randrange(32, 127) for _ in range(size))
        buf = OutputBuffer(256)
        i = 0
        while i < len(data):
            n = rng.randrange(1, 3000)
            buf.feed(data[i:i + n])
            i += n
        assert buf.render() == format_output(data, limit=256), size
        assert buf.total == size


def test_framer_finds_sentinel_split_across_reads():
    sentinel = b"abc123"
    stream = b"out1\nout2" + b"\n" + sentinel + b" 7\n" + b"bg-output"
    for cut in range(1, len(stream)):
        out = OutputBuffer(1024)
        framer = _Framer(sentinel, out)
        rc = framer.feed(stream[:cut])
        unread = stream[cut:]
        if rc is None:
            rc, unread = framer.feed(unread), b""
        assert rc == 7
        assert out.render() == ("out1\nout2", False)
        assert framer.leftover + unread == b"bg-output"  # output after the sentinel is not lost
