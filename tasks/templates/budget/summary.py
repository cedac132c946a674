"""Summarize monthly spending from expenses.txt (one amount per line)."""

with open("expenses.txt") as f:
    amounts = [float(line) for line in f if line.strip()]

months = 3
print(f"entries: {len(amounts)}")
print(f"monthly average: {sum(amounts) / months:.2f}")
