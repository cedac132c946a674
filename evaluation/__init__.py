"""Evaluation, teacher distillation, the main-agent study and the MCP server (issue 8).

Above rl and below cluster (docs/layers.md): the training driver runs held-out evaluation from
here; the `terminus` subcommands (terminus/commands/evaluation.py) drive the rest.

    metrics.py    pure per-episode measurements (fact accuracy, compression, report tokens) + aggregation
    subagents.py  "which subagent": the tiny model, an HF checkpoint dir, an OpenAI-compatible model,
                  the scripted teacher; checked before any work starts, opened as (engine, tokenizer)
    judging.py    the verdict seam over the project's judge (cfg.judge.backend), flattened for tables
    evaluate.py   `terminus eval`: subagents x held-out tasks -> JSON + markdown table + PNG plots
    distill.py    `terminus distill`: teacher trajectories, judged, filtered, deduplicated -> SFT JSONL
    study.py      `terminus study`: a main agent with {terminal} vs {terminal, delegate_to_subagent}
    serve.py      `terminus serve`: the subagent as an MCP tool (stdio)
    heldout.py    held-out evaluation inside a training run; compare_evals, across_runs (run-to-run noise)
    render.py     markdown table and plots (also a training run's rewards.png)
    validate.py   `terminus tasks validate`: replay reference solutions through episodes; validate_sample
    tasks_io.py   the one task loader of the training job and every command: a corpus split (with the
                  generated corpus's replay check) or a JSONL file of Task records
See docs/evaluation.md.
"""
