"""Config of the task corpus: which corpus, which split."""
from __future__ import annotations

from dataclasses import dataclass

from terminus.fields import one_of


@dataclass
class TasksConfig:
    corpus: str = "builtin"   # "builtin" (ships with the repo, builds offline) or a corpus directory
    train_split: str = one_of("train", "validation", "test", default="train")
    eval_split: str = one_of("train", "validation", "test", default="validation")
    cache_dir: str = ""       # where built corpora live; default ~/.cache/terminus/tasks
