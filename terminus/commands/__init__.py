"""The `terminus` subcommands, one module per package they drive; terminus.cli registers them.

    args.py        -c/--config NAME_OR_FILE + key=value overrides; --split / --tasks FILE / --limit
    tasks.py       terminus tasks list|show|build|validate
    rollout.py     terminus rollout
    judge.py       terminus judge calibrate|make-calibration
    rl.py          terminus train-offline (the trainer alone, on a dataset)
    cluster.py     terminus train | compare | submit | status | logs | stop
    evaluation.py  terminus eval | distill | serve | study
"""
