"""tasks: what a main agent delegates (request, repository snapshot, setup) plus what only the
grader sees (ground truth facts, reference solution); corpus builders and the built-in corpus.

First in the data flow (tasks -> rollout -> judge -> rl). Imports only terminus core, and
rollout.sandbox to obtain ground truth by running things.
"""
