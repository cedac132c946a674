"""cluster: the wiring. Ray resource layouts and placement, the end-to-end training driver
(SFT then GRPO), the GRPO step and its schedule, Ray job submission, and fault handling.

Imports every layer below it (core ... evaluation); only the application (terminus) imports it
(docs/layers.md).
"""
