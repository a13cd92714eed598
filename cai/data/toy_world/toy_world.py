"""TFDS builder for the toy world (array_record files, read with ``as_data_source``; no
TensorFlow needed).

Two configs, both fully determined by the world and corpus settings they carry:

* ``corpus``: split ``train``, one pretraining document per example (``text``).
* ``prompts``: splits ``red_team`` and ``helpful`` (training requests, what CAI stages prompt
  with) and ``<dev|test>_<slice>`` for the slices ``direct``, ``adversarial``, ``dual_use``,
  ``benign`` of the two held-out splits (``dev_direct``, ..., ``test_benign``). Each example is
  a conversation (``roles``, ``contents``) ending with a user turn, plus its ``request_id`` and
  ``slice``.

The config name carries a hash of the settings, so two settings never share a directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import tensorflow_datasets as tfds

from cai.data import prepare
from cai.errors import ConfigError
from cai.toyworld import corpus, world

PROMPT_SPLITS = (
    "red_team",
    "helpful",
    *(f"{split}_{name}" for split in ("dev", "test") for name in world.EVAL_SLICES),
)


@dataclasses.dataclass
class ToyWorldConfig(tfds.core.BuilderConfig):
    kind: str = "corpus"  # corpus | prompts
    world: dict[str, Any] = dataclasses.field(default_factory=dict)  # WorldConfig fields
    corpus: dict[str, Any] = dataclasses.field(default_factory=dict)  # CorpusConfig fields


def make_config(
    kind: str, world_cfg: world.WorldConfig, corpus_cfg: corpus.CorpusConfig | None = None
) -> ToyWorldConfig:
    if kind not in ("corpus", "prompts"):
        raise ConfigError(f"toy_world config kind={kind!r}: expected corpus or prompts")
    settings = {
        "world": dataclasses.asdict(world_cfg),
        "corpus": dataclasses.asdict(corpus_cfg) if kind == "corpus" and corpus_cfg else {},
    }
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return ToyWorldConfig(name=f"{kind}_{digest}", kind=kind, **settings)


class ToyWorld(tfds.core.GeneratorBasedBuilder):
    """The embedded toy world of ``cai.toyworld``."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "First version.", "2.0.0": "Dev and test splits."}  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        if self.builder_config.kind == "corpus":
            features = {"text": tfds.features.Text()}
        else:
            features = {
                "request_id": tfds.features.Text(),
                "slice": tfds.features.Text(),
                "roles": tfds.features.Sequence(tfds.features.Text()),
                "contents": tfds.features.Sequence(tfds.features.Text()),
            }
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _world(self) -> world.World:
        return world.generate(world.WorldConfig(**self.builder_config.world))

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        w = self._world()
        if self.builder_config.kind == "corpus":
            docs = corpus.documents(w, corpus.CorpusConfig(**self.builder_config.corpus))
            return {"train": self._generate_examples(docs)}
        sets = {
            "red_team": world.red_team_prompts(w),
            "helpful": world.helpful_prompts(w),
            **{
                f"{split}_{name}": prompts
                for split in ("dev", "test")
                for name, prompts in world.eval_prompts(w, split).items()
            },
        }
        return {name: self._generate_examples(sets[name]) for name in PROMPT_SPLITS}

    def _generate_examples(self, items: Any) -> Any:
        for i, item in enumerate(items):
            if isinstance(item, str):
                yield i, {"text": item}
            else:
                yield (
                    i,
                    {
                        "request_id": item.request_id,
                        "slice": item.slice,
                        "roles": [r for r, _ in item.messages],
                        "contents": [c for _, c in item.messages],
                    },
                )


def builder(
    data_dir: str,
    kind: str,
    world_cfg: world.WorldConfig,
    corpus_cfg: corpus.CorpusConfig | None = None,
) -> ToyWorld:
    """A prepared builder (built on first use) whose splits read with ``as_data_source``."""
    config = make_config(kind, world_cfg, corpus_cfg)
    b = ToyWorld(config=config, data_dir=data_dir, file_format="array_record")
    prepare(b)
    return b
