"""Config of the task corpus: which corpus, which split, and the generated family's knobs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from core.fields import at_least, items, one_of

TRAIN_FAMILIES = ("pyunit", "cmake", "jsnode", "shcheck")
HELD_OUT_FAMILY = "pyscript"


@dataclass
class GeneratedConfig:
    """`tasks.generated` (with `tasks.corpus: generated`): how many projects, which families, which seed.
    See tasks/generated.py for the families and the splits."""
    train_variants: int = at_least(1, default=800, help="projects in the train split (unlimited: any number)")
    eval_variants: int = at_least(1, default=48, help="projects in each held-out split (validation: the "
                                                      "training families; test: the held-out family)")
    families: List[str] = items(lambda: list(TRAIN_FAMILIES), help="training families")
    held_out_family: str = field(default=HELD_OUT_FAMILY, metadata={
        "help": "a family that never appears in training: the test split, to measure transfer"})
    seed: int = 0
    observation_cap: int = at_least(256, default=4096, help="every reference output must fit this many bytes "
                                                            "(the embedded default's observation cap)")


@dataclass
class TasksConfig:
    corpus: str = "builtin"   # "builtin" (hand-written, ships with the repo), "generated", or a corpus directory
    train_split: str = one_of("train", "validation", "test", default="train")
    eval_split: str = one_of("train", "validation", "test", default="validation")
    cache_dir: str = ""       # where built corpora live; default ~/.cache/terminus/tasks
    generated: GeneratedConfig = field(default_factory=GeneratedConfig)
