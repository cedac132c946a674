"""Text helpers."""
import re


def slugify(text):
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)


def word_count(text):
    return len(text.split())


def is_short(text, limit=10):
    return len(text) <= limit


def initials(name):
    return "".join(part[0].upper() for part in name.split())
