"""TFDS builder for Anthropic's HH-RLHF data (arXiv 2204.05862, 2209.07858), read from a
directory the user downloaded (``manual_dir``); array_record files, no TensorFlow needed.

Configs:

* ``comparisons``: every ``*.jsonl`` / ``*.jsonl.gz`` file of ``{"chosen", "rejected"}``
  dialogues (``helpful-base/train.jsonl.gz``, ``harmless-base/test.jsonl.gz``, ...). Each file
  is one split named after its path (``harmless_base_test``). Features: ``chosen``,
  ``rejected``, ``prompt`` (the shared dialogue up to the final ``\\n\\nAssistant:``), and the
  two final replies; ``same_prompt`` is False for the few pairs that differ earlier too.
* ``red_team``: ``red_team_attempts.jsonl[.gz]`` (a JSON array of transcripts, or JSON lines)
  and any ``*prompts*.jsonl`` file of ``{"prompt": ...}`` lines. Features: ``prompt`` (the first
  Human turn), ``transcript`` (empty when the file has none) and ``rating`` (NaN when none).

A malformed record stops the build with ``ConfigError("<file>:<line>: <what is wrong>")``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cai.errors import ConfigError

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


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


def split_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)
    rel = re.sub(r"\.jsonl(\.gz)?$", "", rel)
    return re.sub(r"[^a-z0-9]+", "_", rel.lower()).strip("_")


def find_files(root: str, config: str) -> list[str]:
    """The files of one config under ``root`` (see the module docstring), sorted."""
    if not os.path.isdir(root):
        raise ConfigError(f"hh_rlhf: manual_dir {root} is not a directory")
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not re.search(r"\.jsonl(\.gz)?$", name):
                continue
            red_team = name.startswith("red_team_attempts") or "prompts" in name
            if red_team == (config == "red_team"):
                found.append(os.path.join(dirpath, name))
    if not found:
        raise ConfigError(f"hh_rlhf: no {config} files (*.jsonl, *.jsonl.gz) under {root}")
    return sorted(found)


class HhRlhf(tfds.core.GeneratorBasedBuilder):
    """Anthropic HH-RLHF, from files in ``manual_dir``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}  # noqa: RUF012
    BUILDER_CONFIGS = [  # noqa: RUF012
        tfds.core.BuilderConfig(name="comparisons", description="chosen/rejected pairs"),
        tfds.core.BuilderConfig(name="red_team", description="red-team prompts"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the files of github.com/anthropics/hh-rlhf (e.g. harmless-base/train.jsonl.gz, "
        "red-team-attempts/red_team_attempts.jsonl.gz) under manual_dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        if self.builder_config.name == "comparisons":
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
        files = find_files(root, self.builder_config.name)
        return {split_name(root, p): self._generate_examples(p) for p in files}

    def _generate_examples(self, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
        make = comparison_example if self.builder_config.name == "comparisons" else red_team_example
        for n, rec in read_records(path):
            yield n, make(rec, f"{path}:{n}")


def builder(data_dir: str, config: str, manual_dir: str) -> HhRlhf:
    """A prepared builder over the files in ``manual_dir`` (built on first use)."""
    if config not in ("comparisons", "red_team"):
        raise ConfigError(f"hh_rlhf config {config!r}: expected comparisons or red_team")
    b = HhRlhf(config=config, data_dir=data_dir, file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return b
