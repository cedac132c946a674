"""Print the inventory totals from data.csv."""
import csv

with open("data.csv") as f:
    rows = list(csv.DictReader(f))

total = sum(int(row["count"]) for row in rows)
print(f"items: {len(rows)}")
print(f"total count: {total}")
