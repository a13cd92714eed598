"""SL-CAI on a real model: Gemma-2B (instruction-tuned) critiques and revises its answers to
HH-RLHF red-team prompts under the paper's constitution (in our words), then is fine-tuned on
the revisions plus its own answers to HH helpful prompts.

  # On a TPU v5e-16 slice (see launch/README.md), HF weights and HH-RLHF files on local disk:
  launch/tpu_pod.sh --name=cai-gemma --zone=us-west4-a --accelerator=v5litepod-16 \
    --version=v2-alpha-tpuv5-lite -- --config=experiments/slcai_gemma.py \
    --workdir=gs://BUCKET/runs/slcai_gemma
  # Anywhere, on any small HF/GGUF chat model (tests use a tiny random Gemma):
  python -m cai.main --config=experiments/slcai_gemma.py:local --workdir=/tmp/slcai_local \
    --config.sl_cai.loop.init_from=/path/to/model --config.sl_cai.loop.hh_rlhf_dir=/path/hh

Prompts are chat turns (``style=chat``): the model's own chat template, with the
conversation quoted in a user turn. Nothing here uses the toy world's judge; measure the result
with the later feedback/evaluation stages.
"""

from cai import configs
from cai.sharding import MeshConfig
from cai.stages import sl_cai


def get_config(arg: str | None = None):
    config = configs.base_config(stages=("sl_cai",), model_preset="gemma_2b")
    config.mesh = configs.as_dict(MeshConfig(data=1, fsdp=4, tensor=4))
    config.sl_cai = sl_cai.stage_config(
        steps=1000, batch_size=32, seq_len=1024,
        init_from="/mnt/disks/models/gemma-2b-it", prompts="hh_rlhf",
        hh_rlhf_dir="/mnt/disks/data/hh-rlhf", style="chat", rounds=4, shard_size=256,
        response_tokens=256, critique_tokens=192, revision_tokens=256, temperature=1.0,
        top_p=0.95, compare_direct=False,
    )  # fmt: skip
    config.sl_cai.constitution = "constitutions/paper.json"
    config.sl_cai.optim.learning_rate = 1e-5
    if arg == "local":
        config.model = configs.model_dict("gemma_2b", dtype="float32", remat=False)
        config.mesh = configs.mesh_dict("cpu")
        loop = config.sl_cai.loop
        loop.red_team, loop.helpful, loop.rounds, loop.shard_size = 8, 8, 2, 8
        loop.response_tokens = loop.critique_tokens = loop.revision_tokens = 16
        config.sl_cai.train.update(steps=4, batch_size=8, seq_len=256, save_every=2)
        config.sl_cai.optim.update(warmup_steps=1)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; known: local")
    return config
