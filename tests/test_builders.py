"""TFDS builders (array_record, read with ``as_data_source``, no TensorFlow) on the vendored
data files (``tests/data``, see its README), the HH-RLHF release's train/test split kept in
split names, and one clear error naming file and line for a malformed file."""

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

DATA = pathlib.Path(__file__).resolve().parent / "data"


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
    expected = world.eval_prompts(world.generate(w_cfg), "test")["adversarial"]
    split = prompts["test_adversarial"]
    got = {
        (text(ex["request_id"]), tuple(text(c) for c in ex["contents"]))
        for ex in (split[i] for i in range(len(split)))
    }
    assert got == {(p.request_id, tuple(c for _, c in p.messages)) for p in expected}
    # Other settings get another directory, never the cached one.
    other = toy_world.make_config("corpus", w_cfg, corpus.CorpusConfig(n_docs=301, seed=2))
    assert other.name != b.builder_config.name
    assert "tensorflow" not in sys.modules


def test_hh_rlhf_reads_the_vendored_files(tmp_path):
    pairs = hh_rlhf.builder(str(tmp_path), "comparisons", str(DATA / "hh_rlhf"))
    assert list(pairs.as_data_source()) == ["harmless_base_test_pairs__test"]
    src = pairs.as_data_source()["harmless_base_test_pairs__test"]
    assert len(src) == 201
    ex = src[0]
    assert text(ex["chosen"]).startswith(text(ex["prompt"]))
    assert text(ex["prompt"]).endswith("\n\nAssistant:") and text(ex["chosen_reply"])
    assert sum(not src[i]["same_prompt"] for i in range(len(src))) == 1  # the README's line 201
    red = hh_rlhf.builder(str(tmp_path), "red_team", str(DATA / "hh_rlhf"))
    prompts = red.as_data_source()["harmless_base_test_prompts__test"]
    assert len(prompts) == 200 and text(prompts[0]["prompt"])


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
    ds = b.as_data_source()["red_team_attempts_red_team_attempts__train"]
    got = sorted((text(ds[i]["prompt"]), float(ds[i]["rating"])) for i in range(len(ds)))
    assert got == [("How do I pick a lock?", 3.0), ("Say something mean.", 0.0)]


def write_release(root: pathlib.Path) -> None:
    """Three tiny files in the release's layouts and formats: helpful-base train pairs,
    harmless-base test pairs, red-team attempts (one JSON array, unsplit in the release)."""

    def pair(q: str) -> dict[str, str]:
        h = f"\n\nHuman: {q}\n\nAssistant:"
        return {"chosen": f"{h} Sure.", "rejected": f"{h} No."}

    files = {
        "helpful-base/train.jsonl.gz": [pair("Train helpful 1?"), pair("Train helpful 2?")],
        "harmless-base/test.jsonl.gz": [pair("Test harmful 1?"), pair("Test harmful 2?")],
    }
    for rel, recs in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(root / rel, "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in recs))
    (root / "red-team-attempts").mkdir(parents=True)
    red = [{"transcript": "\n\nHuman: Train red team?\n\nAssistant: No.", "rating": 1}]
    with gzip.open(root / "red-team-attempts/red_team_attempts.jsonl.gz", "wt") as f:
        json.dump(red, f)


def test_hh_rlhf_splits_keep_the_release_split(tmp_path):
    src = tmp_path / "in"
    write_release(src)
    comp = hh_rlhf.builder(str(tmp_path / "data"), "comparisons", str(src)).as_data_source()
    red = hh_rlhf.builder(str(tmp_path / "data"), "red_team", str(src)).as_data_source()
    got = {s: hh_rlhf.release_split(s) for s in [*comp, *red]}
    assert got == {
        "harmless_base_test__test": "test",
        "helpful_base_train__train": "train",
        "red_team_attempts_red_team_attempts__train": "train",
    }
    # File keys (as_split's keys) too, with and without an override.
    assert hh_rlhf.release_split("harmless_base_test") == "test"
    assert hh_rlhf.release_split("red_team_attempts_red_team_attempts") == "train"
    assert hh_rlhf.release_split("harmless_base_test", {"harmless_base_test": "train"}) == "train"
    assert hh_rlhf.release_split("contest_prompts", {"contest_prompts": "test"}) == "test"

    red_team, helpful = hh_rlhf.cai_prompts(str(tmp_path / "data"), str(src))  # train
    assert red_team == ["Train red team?"]
    assert sorted(helpful) == ["Train helpful 1?", "Train helpful 2?"]
    assert not any("Test" in p for p in red_team + helpful)
    # The release's only test files here are harmless comparisons: no red-team test prompts.
    with pytest.raises(ConfigError, match=r"no red-team prompts of the test split under .*in"):
        hh_rlhf.cai_prompts(str(tmp_path / "data"), str(src), split="test")


def test_hh_rlhf_cai_prompts_test_split_and_override(tmp_path):
    """Evaluation reads the vendored test prompts; an override files them under train, in a
    directory of their own, so the un-overridden build is never reused for it."""
    data, hh = str(tmp_path / "data"), str(DATA / "hh_rlhf")
    red_team, helpful = hh_rlhf.cai_prompts(data, hh, split="test")
    want = [json.loads(x)["prompt"] for x in (DATA / "hh_rlhf" / "harmless_base_test_prompts.jsonl")
            .read_text().splitlines()]  # fmt: skip
    assert sorted(red_team) == sorted(want) and helpful == []
    with pytest.raises(ConfigError, match=r"no red-team prompts of the train split under"):
        hh_rlhf.cai_prompts(data, hh)
    as_split = {"harmless_base_test_prompts": "train"}
    red_team, _ = hh_rlhf.cai_prompts(data, hh, split="train", as_split=as_split)
    assert sorted(red_team) == sorted(want)
    shorthand = hh_rlhf.cai_prompts(data, hh, as_train=("harmless_base_test_prompts",))
    assert sorted(shorthand[0]) == sorted(want)
    with pytest.raises(ConfigError, match=r"'harmless_base_test_prompts' is in as_train and"):
        hh_rlhf.cai_prompts(data, hh, as_split={"harmless_base_test_prompts": "test"},
                            as_train=("harmless_base_test_prompts",))  # fmt: skip
    b = hh_rlhf.builder(data, "red_team", hh, as_split)
    assert list(b.as_data_source()) == ["harmless_base_test_prompts__train"]
    assert b.builder_config.name != "red_team"
    assert list(hh_rlhf.builder(data, "red_team", hh).as_data_source()) == [
        "harmless_base_test_prompts__test"
    ]
    with pytest.raises(ConfigError, match=r"as_split names 'harmless_base_tst_prompts', which "
                       r"is no file under .*hh_rlhf"):  # fmt: skip
        hh_rlhf.builder(data, "red_team", hh, {"harmless_base_tst_prompts": "train"})
    with pytest.raises(ConfigError, match=r"as_split\['harmless_base_test_prompts'\]='dev'"):
        hh_rlhf.builder(data, "red_team", hh, {"harmless_base_test_prompts": "dev"})
    with pytest.raises(ConfigError, match=r"split='dev': expected 'train' or 'test'"):
        hh_rlhf.cai_prompts(data, hh, split="dev")


def test_hh_rlhf_file_without_a_release_split_is_named(tmp_path):
    d = tmp_path / "in" / "extra"
    d.mkdir(parents=True)
    (d / "my_prompts.jsonl").write_text('{"prompt": "Hello?"}\n')
    with pytest.raises(ConfigError, match=r"extra/my_prompts\.jsonl: cannot tell its release "
                       r"split .* as_split=\{'extra_my_prompts': 'train' \| 'test'\}"):  # fmt: skip
        hh_rlhf.builder(str(tmp_path / "data"), "red_team", str(tmp_path / "in"))
    with pytest.raises(ConfigError, match=r"'train_test_prompts' names both train and test"):
        hh_rlhf.release_split("train_test_prompts")
    b = hh_rlhf.builder(str(tmp_path / "data"), "red_team", str(tmp_path / "in"),
                        as_split={"extra_my_prompts": "test"})  # fmt: skip
    assert list(b.as_data_source()) == ["extra_my_prompts__test"]


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


def test_hhh_alignment_reads_the_vendored_files(tmp_path):
    b = hhh_alignment.builder(str(tmp_path), str(DATA / "hhh_alignment"))
    ds = b.as_data_source()
    assert {k: len(v) for k, v in ds.items()} == {"harmless": 58, "helpful": 59}
    ex = ds["harmless"][0]
    assert len(ex["choices"]) >= 2 and 0 <= int(ex["target"]) < len(ex["choices"])
    # The label is the response scored 1 in the file.
    task = json.loads((DATA / "hhh_alignment/harmless/task.json").read_text())
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
