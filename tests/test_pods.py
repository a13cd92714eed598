"""The pod configs' ``:smoke`` variants run every stage end to end on 8 fake devices: the same
config, stages and mesh axes as on the pod, with a tiny random HF checkpoint of the family
(built here; no hub) and the vendored HH-RLHF and HHH samples in place of the downloads."""

import json
import os
import shutil
import subprocess
import sys

import pytest

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def tiny_checkpoint(family: str, directory):
    """A random HF model of ``family`` with a tokenizer of its kind: Gemma's sentencepiece with
    its turn markers, or a byte-level BPE (ChatML turns) for Llama."""
    import tiny_hf

    if family == "gemma":
        sp = tiny_hf.train_sentencepiece(
            directory.parent / "sp", 360, ("<start_of_turn>", "<end_of_turn>")
        )
        tiny_hf.build("gemma", vocab_size=360).save_pretrained(directory, safe_serialization=True)
        shutil.copy(sp, directory / "tokenizer.model")
        (directory / "tokenizer_config.json").write_text(json.dumps({
            "chat_template": GEMMA_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>",
            "add_bos_token": True}))  # fmt: skip
    else:
        tiny_hf.train_bpe(directory, vocab_size=300)
        tiny_hf.build("llama", vocab_size=300).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.mark.parametrize(
    "config,family",
    [("gemma_2b_rlcai_tpu", "gemma"),
     pytest.param("llama_8b_rlcai_tpu", "llama", marks=pytest.mark.long)],
)  # fmt: skip
def test_pod_config_smoke_runs_every_stage_on_8_devices(repo, tmp_path, config, family):
    pytest.importorskip("transformers")
    model = tiny_checkpoint(family, tmp_path / family)
    run = tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}  # fmt: skip
    cmd = [sys.executable, "-m", "cai.main", f"--config={repo}/experiments/{config}.py:smoke",
           f"--config.init_from={model}", f"--workdir={run}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    from cai import presets

    for stage in presets.REAL_RLCAI:
        assert (run / stage).is_dir(), stage
    assert (run / "rl_cai" / "done.json").exists()
    # helpfulness labels are the release's (here: the vendored pairs standing in for them)
    assert summary["human_feedback_stage"]["helpfulness"]["source"] == "hh_rlhf"
    # judged by the held-out PM on the release's test prompts, for every model
    for key in ("base", "sl_cai", "rl_cai"):
        assert summary[key]["test"]["n_red_team"] == 8
    assert {"sl_cai_vs_base", "rl_cai_vs_base", "rl_cai_vs_sl_cai"} <= set(summary["paired"])
    assert "hh_rlhf/harmless_base_test_pairs" in json.dumps(summary["hhh"])
    assert "red_team score" in proc.stdout


def test_hh_rlhf_helpfulness_labels_are_the_release_s(repo, tmp_path):
    """source=hh_rlhf writes each release comparison once, chosen reply labelled 1.0 wherever
    it is listed, listed first in about half of them, conversations ending on the human."""
    from etils import epath

    from cai.data.hh_rlhf import hh_rlhf
    from cai.stages import human_feedback

    hh = repo / "tests" / "data" / "hh_rlhf"
    cfg = human_feedback.HumanFeedbackConfig(
        source="hh_rlhf", hh_rlhf_dir=str(hh), hh_rlhf_files=("harmless_base_test_pairs",),
        hh_rlhf_as_train=("harmless_base_test_pairs",),
    )  # fmt: skip
    recs = human_feedback.hh_rlhf_records(epath.Path(tmp_path), cfg)
    rows = hh_rlhf.comparison_rows(str(tmp_path / "data"), str(hh), "train",
                                   ("harmless_base_test_pairs",),
                                   as_train=("harmless_base_test_pairs",))  # fmt: skip
    chosen = {src: good for src, _, good, _ in rows}
    assert 150 < len(recs) <= len(rows) <= 201
    for r in recs:
        assert r["task"] == "helpfulness" and r["messages"][-1][0] == "user"
        winner = r["responses"][0] if r["p_a"] == 1.0 else r["responses"][1]
        assert winner == chosen[r["request_id"]]
    first = sum(r["p_a"] == 1.0 for r in recs) / len(recs)
    assert 0.4 < first < 0.6
    # the release's test files are never train data unless a test says so
    with pytest.raises(Exception, match="no train comparisons"):
        hh_rlhf.comparison_rows(str(tmp_path / "data"), str(hh), "train",
                                ("harmless_base_test_pairs",))  # fmt: skip


def test_real_model_stage_settings_are_checked():
    from cai import stage_lib
    from cai.errors import ConfigError
    from cai.stages import evaluate, human_feedback, rl_cai

    with pytest.raises(ConfigError, match="needs evaluate.hh_rlhf_dir and evaluate.judge_pm"):
        evaluate.EvalConfig(prompts="hh_rlhf", hh_rlhf_dir="/x")
    with pytest.raises(ConfigError, match="evaluate.feedback needs the toy world's judge"):
        evaluate.EvalConfig(prompts="hh_rlhf", hh_rlhf_dir="/x", judge_pm="pm", feedback="fb")
    with pytest.raises(ConfigError, match="rl_cai.prompts=hh_rlhf needs rl_cai.hh_rlhf_dir"):
        rl_cai.RLConfig(prompts="hh_rlhf")
    with pytest.raises(ConfigError, match="human_feedback.source='people'"):
        human_feedback.HumanFeedbackConfig(source="people")
    import ml_collections

    config = ml_collections.ConfigDict({"base": "init_from", "init_from": ""})
    with pytest.raises(ConfigError, match="config.init_from is empty"):
        stage_lib.resolve_init(config, None, "base", "sl_cai.loop.init_from")
    config.init_from = "/no/such/model"
    with pytest.raises(ConfigError, match="config.init_from=/no/such/model does not exist"):
        stage_lib.resolve_init(config, None, "base", "sl_cai.loop.init_from")
