"""One module per stage of the paper, each exposing ``run(config, workdir)``.

Stages talk through files in the workdir (checkpoints, JSONL shards, ``summary.json``) and
never import each other; what they share lives in ``cai.stage_lib``.
"""
