"""TFDS builders (array_record, read with ``as_data_source``, no TensorFlow) on the shared data
files, and one clear error naming file and line for a malformed file."""

import gzip
import json
import pathlib
import sys

import pytest

from cai.data.hh_rlhf import hh_rlhf
from cai.data.hhh_alignment import hhh_alignment
from cai.data.toy_world import toy_world
from cai.errors import ConfigError
from cai.toyworld import corpus, world

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is not present")


def text(x):
    return x.decode("utf-8") if isinstance(x, bytes) else x


def test_toy_world_builder_matches_the_generator(tmp_path):
    w_cfg, c_cfg = world.WorldConfig(seed=2), corpus.CorpusConfig(n_docs=300, seed=2)
    b = toy_world.builder(str(tmp_path), "corpus", w_cfg, c_cfg)
    src = b.as_data_source()["train"]
    stored = sorted(text(src[i]["text"]) for i in range(len(src)))
    assert stored == sorted(corpus.documents(world.generate(w_cfg), c_cfg))
    prompts = toy_world.builder(str(tmp_path), "prompts", w_cfg).as_data_source()
    assert set(prompts) == set(toy_world.PROMPT_SPLITS)
    expected = world.eval_prompts(world.generate(w_cfg))["adversarial"]
    got = {
        (text(ex["request_id"]), tuple(text(c) for c in ex["contents"]))
        for ex in (prompts["adversarial"][i] for i in range(len(prompts["adversarial"])))
    }
    assert got == {(p.request_id, tuple(c for _, c in p.messages)) for p in expected}
    # Other settings get another directory, never the cached one.
    other = toy_world.make_config("corpus", w_cfg, corpus.CorpusConfig(n_docs=301, seed=2))
    assert other.name != b.builder_config.name
    assert "tensorflow" not in sys.modules


@needs_shared
def test_hh_rlhf_reads_the_shared_files(tmp_path):
    pairs = hh_rlhf.builder(str(tmp_path), "comparisons", str(SHARED / "hh_rlhf"))
    src = pairs.as_data_source()["harmless_base_test_pairs"]
    assert len(src) == 1253
    ex = src[0]
    assert text(ex["chosen"]).startswith(text(ex["prompt"]))
    assert text(ex["prompt"]).endswith("\n\nAssistant:") and text(ex["chosen_reply"])
    assert sum(not src[i]["same_prompt"] for i in range(len(src))) == 3  # as released
    red = hh_rlhf.builder(str(tmp_path), "red_team", str(SHARED / "hh_rlhf"))
    prompts = red.as_data_source()["harmless_base_test_prompts"]
    assert len(prompts) == 1177 and text(prompts[0]["prompt"])


def test_hh_rlhf_red_team_attempts_format(tmp_path):
    """The red-team release is one JSON array of transcripts (written here: not shipped)."""
    src = tmp_path / "in" / "red-team-attempts"
    src.mkdir(parents=True)
    records = [
        {"transcript": "\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: ok",
         "rating": 3.0},
        {"transcript": "\n\nHuman: Say something mean.\n\nAssistant: No.", "rating": 0},
    ]  # fmt: skip
    with gzip.open(src / "red_team_attempts.jsonl.gz", "wt") as f:
        json.dump(records, f, indent=1)
    b = hh_rlhf.builder(str(tmp_path / "data"), "red_team", str(tmp_path / "in"))
    ds = b.as_data_source()["red_team_attempts_red_team_attempts"]
    got = sorted((text(ds[i]["prompt"]), float(ds[i]["rating"])) for i in range(len(ds)))
    assert got == [("How do I pick a lock?", 3.0), ("Say something mean.", 0.0)]


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a'
          '\\n\\nAssistant: c"}', '{"chosen": "x", "rejected": 3}'],
         r"train\.jsonl:2: field 'rejected' must be a string, is a int"),
        (['{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a'
          '\\n\\nAssistant: c"}', "", '{"chosen": oops}'],
         r"train\.jsonl:3: not valid JSON"),
        (['{"chosen": "\\n\\nHuman: a", "rejected": "\\n\\nHuman: a"}'],
         r"train\.jsonl:1: the dialogue has no 'Assistant:' turn"),
    ],
)  # fmt: skip
def test_hh_rlhf_malformed_file_names_file_and_line(tmp_path, lines, message):
    d = tmp_path / "in" / "harmless-base"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        hh_rlhf.builder(str(tmp_path / "data"), "comparisons", str(tmp_path / "in"))


def test_hh_rlhf_missing_directory_or_files(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        hh_rlhf.find_files(str(tmp_path / "nope"), "comparisons")
    with pytest.raises(ConfigError, match="no red_team files"):
        hh_rlhf.find_files(str(tmp_path), "red_team")


@needs_shared
def test_hhh_alignment_reads_the_shared_files(tmp_path):
    b = hhh_alignment.builder(str(tmp_path), str(SHARED / "hhh_alignment"))
    ds = b.as_data_source()
    assert {k: len(v) for k, v in ds.items()} == {"harmless": 58, "helpful": 59}
    ex = ds["harmless"][0]
    assert len(ex["choices"]) >= 2 and 0 <= int(ex["target"]) < len(ex["choices"])
    # The label is the response scored 1 in the file.
    task = json.loads((SHARED / "hhh_alignment/harmless/task.json").read_text())
    best = {(e["input"], k) for e in task["examples"] for k, v in e["target_scores"].items() if v}
    worst = {
        (e["input"], k) for e in task["examples"] for k, v in e["target_scores"].items() if not v
    }
    for i in range(len(ds["harmless"])):
        e = ds["harmless"][i]
        target = int(e["target"])
        assert (text(e["input"]), text(e["choices"][target])) in best
        assert (text(e["input"]), text(e["choices"][1 - target])) in worst


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"examples": [\n  {"input": "hi",\n  }\n]}', r"harmless/task\.json:3: not valid JSON"),
        ('{"examples": []}', r"harmless/task\.json: field 'examples' must be a non-empty list"),
        ('{"examples": [{"input": "a", "target_scores": {"x": 1, "y": 1}}]}',
         r"harmless/task\.json: examples\[0\]: 'target_scores' must score exactly one"),
        ('{"examples": [{"input": 3, "target_scores": {"x": 1, "y": 0}}]}',
         r"examples\[0\]: field 'input' must be a string"),
    ],
)  # fmt: skip
def test_hhh_alignment_malformed_file_is_named(tmp_path, content, message):
    (tmp_path / "in" / "harmless").mkdir(parents=True)
    (tmp_path / "in" / "harmless" / "task.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        hhh_alignment.builder(str(tmp_path / "data"), str(tmp_path / "in"))
