"""tasks: what a main agent delegates (request, repository snapshot, setup) plus what only the
grader sees (ground truth facts, reference solution); corpus builders and the built-in corpus.

First in the data flow (tasks -> rollout -> judge -> rl). Imports only core, and sandbox to obtain
ground truth by running things (docs/layers.md). Checking a corpus through episodes is a higher
layer's (evaluation.validate): load_tasks takes that check as an argument.
"""
from tasks.corpus import CorpusError, load_tasks
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task

__all__ = ["load_tasks", "CorpusError", "Task", "Fact", "GroundTruth", "ReferenceSolution"]
