"""RL-CAI on Llama-3-8B-Instruct on a TPU v5p-64 slice (32 chips, 95 GiB HBM each).

  # Check that every step fits before renting the slice (no weights, fake devices):
  XLA_FLAGS=--xla_force_host_platform_device_count=32 JAX_PLATFORMS=cpu \
    python -m cai.main --config=experiments/llama_8b_rlcai_tpu.py --dry_run
  # On the pod (see launch/README.md):
  launch/tpu_pod.sh --name=cai-llama --zone=us-east5-a --accelerator=v5p-64 \
    --version=v2-alpha-tpuv5 -- --config=experiments/llama_8b_rlcai_tpu.py \
    --workdir=gs://BUCKET/runs/llama_8b
  # Locally, the same config shrunk to a tiny random Llama (GQA) on 8 (fake) devices:
  python -m cai.main --config=experiments/llama_8b_rlcai_tpu.py:smoke --dry_run

  # The same, run end to end on a tiny random checkpoint of this family (an HF directory you
  # built, e.g. as tests/test_pods.py does) and the vendored HH-RLHF sample:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m cai.main \
    --config=experiments/llama_8b_rlcai_tpu.py:smoke --config.init_from=TINY_HF_DIR \
    --workdir=/tmp/pod_smoke

Every stage of the paper (``presets.REAL_RLCAI``): SL-CAI on the release's train red-team
prompts, pairs, AI feedback from the base model, the release's helpfulness comparisons, a PM on
each half of the comparisons, PPO, and evaluation on the release's test prompts judged by the
held-out PM, plus HHH. ``--dry_run`` compiles every step (fine-tuning, generation, scoring,
the PM step and PPO's rollout, scoring and update) for the real shapes.
"""

import pathlib

import ml_collections

from cai import configs, presets
from cai.dry_run import DryRunConfig, shrink_for_smoke
from cai.sharding import MeshConfig


def get_config(arg: str | None = None):
    config = configs.base_config(stages=presets.REAL_RLCAI, model_preset="llama3_8b")
    # The v5p-64 slice: data=2, fsdp=4, tensor=4. Tensor parallelism keeps sampling from
    # gathering whole weight matrices on every chip (FSDP alone does; see README's dry-run table).
    config.mesh = configs.as_dict(MeshConfig(data=2, fsdp=4, tensor=4))
    # An HF directory (config.json + model*.safetensors + tokenizer.model), a GGUF file or a
    # checkpoint written by `python -m cai.convert`. HF/GGUF sources are read from local disk on
    # every worker; orbax checkpoints may live on gs://.
    config.init_from = "/mnt/disks/models/Meta-Llama-3-8B-Instruct"
    # The tokenizer travels with init_from (tokenizer.json, byte-level BPE). Llama-3's own chat
    # turns are not one of our chat formats, so prompts use the HH format, as in the paper.
    config.tokenizer = "init_from"
    # The paper's constitution in our words (constitutions/README.md); experiments/slcai_gemma.py
    # runs the SL-CAI stage with it.
    config.constitution = "constitutions/paper.json"
    config.data = ml_collections.ConfigDict(
        {
            "builder": "hh_rlhf",  # red-team prompts + helpfulness pairs, HH format
            # Your download of github.com/anthropics/hh-rlhf (helpful-base/, harmless-base/,
            # red-team-attempts/, ...) on every worker's local disk; CAI stages read its train
            # split only (hh_rlhf.cai_prompts), evaluation its test split.
            "dir": "/mnt/disks/data/hh-rlhf",
        }
    )
    # Shapes of the later stages' steps, compiled by --dry_run:
    #   sl_cai (critique -> revision -> supervised fine-tuning on revisions): generate + train;
    #   feedback (the model labels response pairs with (A)/(B) log-probs): score;
    #   preference_model: train (scalar head); ppo: generate + train.
    config.dry_run = configs.as_dict(
        DryRunConfig(
            train_batch_size=64,
            train_seq_len=2048,
            sample_batch_size=128,
            prompt_len=512,
            max_new_tokens=256,
            score_batch_size=128,
            score_prompt_len=1024,
            score_len=8,
        )
    )
    smoke = arg == "smoke"
    if smoke:
        shrink_for_smoke(config, "llama3_8b", n_kv_heads=2)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; known: smoke")
    if smoke:  # the vendored HH-RLHF sample (tests/data/README.md) in place of the download;
        # HHH only on its comparisons (BIG-bench hhh_alignment is measured in tests/test_hhh.py)
        data = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
        presets.real_rlcai(config, str(data / "hh_rlhf"), "", smoke=True)
    else:
        presets.real_rlcai(config, config.data.dir, "/mnt/disks/data/hhh_alignment")
    return config
