"""Small arithmetic helpers."""


def add(a, b):
    return a + b


def maximum(values):
    best = values[0]
    for v in values[1:]:
        if v > best:
            best = v
    return best


def total_range(n):
    """Sum of 1..n."""
    return sum(range(1, n + 1))


def mean(values):
    return sum(values) / len(values)
