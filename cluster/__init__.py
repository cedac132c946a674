"""cluster: the wiring. Ray resource layouts and placement, the end-to-end training driver
(SFT then GRPO), Ray job submission, and fault handling.

The only package that imports all the others; nothing imports cluster.
"""
