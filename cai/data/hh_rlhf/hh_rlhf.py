"""TFDS builder for Anthropic's HH-RLHF data (arXiv 2204.05862, 2209.07858), read from a
directory the user downloaded (``manual_dir``); array_record files, no TensorFlow needed.

Configs:

* ``comparisons``: every ``*.jsonl`` / ``*.jsonl.gz`` file of ``{"chosen", "rejected"}``
  dialogues (``helpful-base/train.jsonl.gz``, ``harmless-base/test.jsonl.gz``, ...). Features:
  ``chosen``, ``rejected``, ``prompt`` (the shared dialogue up to the final
  ``\\n\\nAssistant:``), and the two final replies; ``same_prompt`` is False for the few pairs
  that differ earlier too.
* ``red_team``: ``red_team_attempts.jsonl[.gz]`` (a JSON array of transcripts, or JSON lines)
  and any ``*prompts*.jsonl`` file of ``{"prompt": ...}`` lines. Features: ``prompt`` (the first
  Human turn), ``transcript`` (empty when the file has none) and ``rating`` (NaN when none).

Splits keep the release's train/test split, so nothing trains on a file released as test by
accident. Each file is one split named ``<file>__<release split>``: ``<file>`` is its path
under ``manual_dir``, lower-cased, without ``.jsonl[.gz]``, each run of other characters than
``a-z0-9`` one ``_`` (``harmless-base/test.jsonl.gz`` -> ``harmless_base_test``), and the
release split comes from the file name (``release_split``):
``harmless_base_test__test``, ``helpful_base_train__train``,
``red_team_attempts_red_team_attempts__train`` (the release ships red-team attempts unsplit
and the paper trains on them). A file whose name says neither stops the build with a
``ConfigError`` naming it, unless ``as_split`` says which (``{"my_prompts": "train"}``, keyed by
``<file>``; ``cai_prompts`` also takes ``as_train``, a tuple of such keys); tests use the same
override to treat a vendored test file as train data. An override gets its own config name (a
hash of it), so it never reuses data prepared without it; 2.0.0 (these split names) never
reuses data prepared by 1.0.0 (splits named ``<file>`` alone).

``cai_prompts`` is what the CAI stages read: red-team and helpful prompts of one release split
(``train`` for SL-CAI/RL-CAI, ``test`` for evaluation).

A malformed record stops the build with ``ConfigError("<file>:<line>: <what is wrong>")``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cai.data import prepare
from cai.errors import ConfigError

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
CONFIGS = ("comparisons", "red_team")
RELEASE_SPLITS = ("train", "test")
SEP = "__"  # between a file's name and its release split; file names never hold "__"


def open_text(path: str) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path)


def read_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for JSON lines, or (record index, record) for a JSON array."""
    with open_text(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ConfigError(f"{path}: record {i} is not a JSON object")
            yield i, rec
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        yield n, rec


def text_field(rec: dict[str, Any], field: str, where: str) -> str:
    value = rec.get(field)
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise ConfigError(f"{where}: field {field!r} must be a string, is {got}")
    return value


def split_last_reply(dialogue: str, where: str) -> tuple[str, str]:
    """(dialogue up to and including the last ``\\n\\nAssistant:``, the reply after it)."""
    i = dialogue.rfind(ASSISTANT)
    if i < 0:
        raise ConfigError(f"{where}: the dialogue has no {ASSISTANT.strip()!r} turn")
    return dialogue[: i + len(ASSISTANT)], dialogue[i + len(ASSISTANT) :].strip()


def comparison_example(rec: dict[str, Any], where: str) -> dict[str, str]:
    chosen, rejected = text_field(rec, "chosen", where), text_field(rec, "rejected", where)
    prompt, chosen_reply = split_last_reply(chosen, where)
    prompt_r, rejected_reply = split_last_reply(rejected, where)
    return {
        "chosen": chosen,
        "rejected": rejected,
        "prompt": prompt,
        "chosen_reply": chosen_reply,
        "rejected_reply": rejected_reply,
        # A few released pairs (3 of 1253 in harmless-base test) differ earlier in the dialogue;
        # they are kept, flagged, for the user to drop where a shared prompt matters.
        "same_prompt": prompt == prompt_r,
    }


def first_human_turn(transcript: str, where: str) -> str:
    i = transcript.find(HUMAN)
    if i < 0:
        raise ConfigError(f"{where}: the transcript has no {HUMAN.strip()!r} turn")
    rest = transcript[i + len(HUMAN) :]
    return rest.split(ASSISTANT)[0].split(HUMAN)[0].strip()


def red_team_example(rec: dict[str, Any], where: str) -> dict[str, Any]:
    if "transcript" in rec:
        transcript = text_field(rec, "transcript", where)
        prompt = first_human_turn(transcript, where)
    elif "prompt" in rec:
        transcript, prompt = "", text_field(rec, "prompt", where).strip()
    else:
        raise ConfigError(f"{where}: expected a 'transcript' or a 'prompt' field")
    rating = rec.get("rating")
    if rating is not None and not isinstance(rating, (int, float)):
        raise ConfigError(f"{where}: field 'rating' must be a number, is {rating!r}")
    return {
        "prompt": prompt,
        "transcript": transcript,
        "rating": math.nan if rating is None else float(rating),
    }


def file_key(root: str, path: str) -> str:
    """A file's name as ``as_split`` keys it: its path under ``root``, lower-cased, without
    ``.jsonl[.gz]``, every run of other characters one ``_`` (``harmless_base_test``)."""
    rel = os.path.relpath(path, root)
    rel = re.sub(r"\.jsonl(\.gz)?$", "", rel)
    return re.sub(r"[^a-z0-9]+", "_", rel.lower()).strip("_")


def release_split(
    split_name: str, as_split: Mapping[str, str] | None = None, *, where: str = ""
) -> str:
    """``"train"`` or ``"test"``: the release split of a builder split (``<file>__<split>``, as
    the builder names them: the suffix, which already holds any override) or of a file key.

    For a file key, in order: ``as_split[key]`` if given; ``test`` or ``train`` if one of them
    is a ``_``-separated word of the key (``harmless_base_test``, ``helpful_base_train``); a
    ``red_team_attempts`` file is ``train`` (the release ships it unsplit; the paper trains on
    it). Anything else raises ``ConfigError`` naming ``where`` (the file), never a guess: a
    wrong guess would put evaluation prompts into training data.
    """
    _, sep, tail = split_name.rpartition(SEP)
    if sep and tail in RELEASE_SPLITS:
        return tail
    what = where or repr(split_name)
    if as_split and split_name in as_split:
        return check_release(as_split[split_name], f"as_split[{split_name!r}]")
    words = set(split_name.split("_"))
    named = [s for s in RELEASE_SPLITS if s in words]
    if len(named) == 2:
        raise ConfigError(
            f"hh_rlhf: {what} names both train and test; say which in "
            f"as_split={{{split_name!r}: 'train' | 'test'}}"
        )
    if named:
        return named[0]
    if "red_team_attempts" in split_name:
        return "train"
    raise ConfigError(
        f"hh_rlhf: {what}: cannot tell its release split (the name has neither 'train' nor "
        f"'test'); say which in as_split={{{split_name!r}: 'train' | 'test'}}"
    )


def check_release(value: Any, where: str) -> str:
    if value not in RELEASE_SPLITS:
        raise ConfigError(f"hh_rlhf: {where}={value!r}: expected 'train' or 'test'")
    return value


def split_name(root: str, path: str, as_split: Mapping[str, str] | None = None) -> str:
    """The builder split of one file: ``<file key>__<release split>``."""
    key = file_key(root, path)
    return f"{key}{SEP}{release_split(key, as_split, where=path)}"


def data_files(root: str) -> list[tuple[str, str]]:
    """(config, path) of every ``*.jsonl`` / ``*.jsonl.gz`` file under ``root``, sorted."""
    if not os.path.isdir(root):
        raise ConfigError(f"hh_rlhf: manual_dir {root} is not a directory")
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not re.search(r"\.jsonl(\.gz)?$", name):
                continue
            red_team = name.startswith("red_team_attempts") or "prompts" in name
            found.append(("red_team" if red_team else "comparisons", os.path.join(dirpath, name)))
    return sorted(found, key=lambda cp: cp[1])


def find_files(root: str, config: str) -> list[str]:
    """The files of one config under ``root`` (see the module docstring), sorted."""
    found = [p for c, p in data_files(root) if c == config]
    if not found:
        raise ConfigError(f"hh_rlhf: no {config} files (*.jsonl, *.jsonl.gz) under {root}")
    return found


def check_as_split(root: str, as_split: Mapping[str, str]) -> None:
    """Every override names a file under ``root`` and a release split: a mistyped key would
    otherwise be ignored, and the file it meant would keep the split its name gives it."""
    keys = {file_key(root, p) for _, p in data_files(root)}
    for key, value in as_split.items():
        check_release(value, f"as_split[{key!r}]")
        if key not in keys:
            raise ConfigError(
                f"hh_rlhf: as_split names {key!r}, which is no file under {root} "
                f"(files: {', '.join(sorted(keys)) or 'none'})"
            )


@dataclasses.dataclass
class HhRlhfConfig(tfds.core.BuilderConfig):
    kind: str = "comparisons"  # comparisons | red_team
    as_split: dict[str, str] = dataclasses.field(default_factory=dict)  # file key -> split


def make_config(config: str, as_split: Mapping[str, str] | None = None) -> HhRlhfConfig:
    """``comparisons`` / ``red_team``, or ``<config>_<hash>`` with an override, so data
    prepared under one override is never read back under another."""
    if config not in CONFIGS:
        raise ConfigError(f"hh_rlhf config {config!r}: expected comparisons or red_team")
    overrides = {str(k): str(v) for k, v in sorted(dict(as_split or {}).items())}
    name = config
    if overrides:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{config}_{digest}"
    what = "chosen/rejected pairs" if config == "comparisons" else "red-team prompts"
    return HhRlhfConfig(name=name, description=what, kind=config, as_split=overrides)


class HhRlhf(tfds.core.GeneratorBasedBuilder):
    """Anthropic HH-RLHF, from files in ``manual_dir``."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {  # noqa: RUF012
        "1.0.0": "First version.",
        "2.0.0": "Split names end in __train / __test, the release split of their file.",
    }
    BUILDER_CONFIGS = [make_config(c) for c in CONFIGS]  # noqa: RUF012
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the files of github.com/anthropics/hh-rlhf (e.g. harmless-base/train.jsonl.gz, "
        "red-team-attempts/red_team_attempts.jsonl.gz) under manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        if self.builder_config.kind == "comparisons":
            names = ("chosen", "rejected", "prompt", "chosen_reply", "rejected_reply")
            features = {k: text for k in names}
            features["same_prompt"] = tfds.features.Scalar(np.bool_)
        else:
            features = {
                "prompt": text,
                "transcript": text,
                "rating": tfds.features.Scalar(np.float32),
            }
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        root = os.fspath(dl_manager.manual_dir)
        as_split = self.builder_config.as_split
        check_as_split(root, as_split)
        files = find_files(root, self.builder_config.kind)
        return {split_name(root, p, as_split): self._generate_examples(p) for p in files}

    def _generate_examples(self, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
        kind = self.builder_config.kind
        make = comparison_example if kind == "comparisons" else red_team_example
        for n, rec in read_records(path):
            yield n, make(rec, f"{path}:{n}")


def builder(
    data_dir: str, config: str, manual_dir: str, as_split: Mapping[str, str] | None = None
) -> HhRlhf:
    """A prepared builder over the files in ``manual_dir`` (built on first use).

    ``as_split`` maps file keys (``file_key``: ``harmless_base_test_prompts``) to the release
    split to file them under, for files whose name says none, or for tests that need a
    ``train`` split from a file released as test (``{"harmless_base_test_prompts": "train"}``).
    """
    cfg = make_config(config, as_split)
    if cfg.as_split:
        check_as_split(manual_dir, cfg.as_split)  # before TFDS starts writing anything
    # TFDS refuses a config object named like a registered one: those go by name.
    b = HhRlhf(
        config=cfg if cfg.as_split else cfg.name, data_dir=data_dir, file_format="array_record"
    )
    prepare(b, download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return b


def as_text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def overrides(
    as_split: Mapping[str, str] | None, as_train: Sequence[str] | str = ()
) -> dict[str, str]:
    """``as_split`` plus ``as_train`` (file keys to read as train: the shorthand a config's
    tuple field holds) as one mapping; a key given two different splits is a ``ConfigError``."""
    merged = {str(k): str(v) for k, v in dict(as_split or {}).items()}
    for key in map(str, (as_train,) if isinstance(as_train, str) else as_train):
        if merged.setdefault(key, "train") != "train":
            raise ConfigError(f"hh_rlhf: {key!r} is in as_train and as_split={merged[key]!r}")
    return merged


def cai_prompts(
    data_dir: str,
    manual_dir: str,
    split: str = "train",
    as_split: Mapping[str, str] | None = None,
    as_train: Sequence[str] | str = (),
) -> tuple[list[str], list[str]]:
    """(red-team prompts, helpful prompts) of one release split, as the CAI stages use them.

    Red-team prompts are the first human turns of the ``red_team`` files of ``split``; helpful
    prompts the first human turns of the ``helpful*`` comparison files of ``split`` (empty when
    there are none: whether that is an error is the caller's call). SL-CAI and RL-CAI read
    ``split="train"`` (the default), so a real-model run never trains on a file the release
    calls test; evaluation reads ``split="test"``. ``as_split`` / ``as_train`` override file
    keys' splits (see ``builder``; ``as_train=("harmless_base_test_prompts",)`` is
    ``as_split={"harmless_base_test_prompts": "train"}``), for tests on the vendored test-split
    sample only. Raises ``ConfigError`` naming ``manual_dir`` when it holds no red-team prompt
    of ``split``.
    """
    check_release(split, "split")
    as_split = overrides(as_split, as_train)
    red = builder(data_dir, "red_team", manual_dir, as_split).as_data_source()
    red_team = [
        as_text(ex["prompt"]) for s in sorted(red) if release_split(s) == split for ex in red[s]
    ]
    if not red_team:
        have = ", ".join(f"{s} ({len(red[s])})" for s in sorted(red)) or "none"
        raise ConfigError(
            f"hh_rlhf: no red-team prompts of the {split} split under {manual_dir} (red-team "
            f"splits: {have}); add a red-team file of that split (red-team-attempts is train), "
            "or name a file's split in as_split / as_train"
        )
    helpful: list[str] = []
    if any(c == "comparisons" for c, _ in data_files(manual_dir)):
        comp = builder(data_dir, "comparisons", manual_dir, as_split).as_data_source()
        for s in sorted(comp):
            if not s.startswith("helpful") or release_split(s) != split:
                continue
            for i, ex in enumerate(comp[s]):
                helpful.append(first_human_turn(as_text(ex["prompt"]), f"{s}[{i}]"))
    return red_team, helpful


def comparison_rows(
    data_dir: str,
    manual_dir: str,
    split: str = "train",
    prefixes: Sequence[str] = ("helpful",),
    as_split: Mapping[str, str] | None = None,
    as_train: Sequence[str] | str = (),
) -> list[tuple[str, str, str, str]]:
    """(source, prompt dialogue, chosen reply, rejected reply) of every usable comparison of one
    release split in the files whose key starts with one of ``prefixes`` (``helpful``: the
    helpfulness comparisons a preference model learns from, labelled by crowdworkers), in
    split then example order. Pairs whose dialogues differ before the last reply, or whose
    replies are identical, are no comparison of two replies and are skipped. ``prompt`` ends
    with the last ``\\n\\nAssistant:``."""
    check_release(split, "split")
    comp = builder(data_dir, "comparisons", manual_dir, overrides(as_split, as_train))
    source = comp.as_data_source()
    rows = []
    for s in sorted(source):
        if release_split(s) != split or not s.startswith(tuple(prefixes)):
            continue
        for i, ex in enumerate(source[s]):
            good, bad = as_text(ex["chosen_reply"]), as_text(ex["rejected_reply"])
            if bool(ex["same_prompt"]) and good != bad:
                rows.append((f"{s}[{i}]", as_text(ex["prompt"]), good, bad))
    if not rows:
        have = ", ".join(sorted(source)) or "none"
        raise ConfigError(
            f"hh_rlhf: no {split} comparisons in files starting with {', '.join(prefixes)} "
            f"under {manual_dir} (comparison splits: {have})"
        )
    return rows
