"""HHH evaluation of one checkpoint: BIG-bench hhh_alignment and HH-RLHF test comparisons, the model
as a feedback model (its (A)/(B) answer; raw and position-debiased) or, with --pm, as a
preference model (its rewards). See cai/hhh.py for the protocol and docs/hhh.md for results.

python -m cai.evaluate_hhh --checkpoint=SmolLM2-135M-Instruct.Q4_1.gguf \
    --hhh_dir=tests/data/hhh_alignment --hh_rlhf_dir=tests/data/hh_rlhf --style=chat
python -m cai.evaluate_hhh --checkpoint=WORKDIR/preference_model --pm --hh_rlhf_dir=DIR

The checkpoint may be a checkpoint written here (a checkpoint, stage or workdir directory), an
HF model directory or a GGUF file. The table goes to stdout; --out writes every number, per item
included, as JSON.
"""

from __future__ import annotations

import os

from absl import app, flags

from cai import constitution, feedback, hhh, sharding
from cai.cli import fail, one_line, parse_flags, quiet_libraries
from cai.errors import ConfigError
from cai.files import write_json

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint dir, stage dir or workdir; an HF model dir; a .gguf file."
)
_PM = flags.DEFINE_bool("pm", False, "Evaluate as a preference model (its rewards).")
_STYLE = flags.DEFINE_enum(
    "style", "text", hhh.STYLES, "Feedback prompt: plain text or a chat turn."
)
_HHH_DIR = flags.DEFINE_string(
    "hhh_dir", None, "A copy of bigbench/benchmark_tasks/hhh_alignment/ (its subtask dirs)."
)
_HH_RLHF_DIR = flags.DEFINE_string(
    "hh_rlhf_dir", None, "HH-RLHF files; the comparison files of the test split are read."
)
_N_HH = flags.DEFINE_integer(
    "n_hh", 200, "First N usable pairs of each HH-RLHF test file (-1: all)."
)
_QUESTION = flags.DEFINE_string(
    "question", None, "The question for every task (default: per task, see cai/hhh.py)."
)
_CONSTITUTION = flags.DEFINE_string(
    "constitution", None, "Put this constitution's worked comparisons first (few-shot)."
)
_DEBIAS = flags.DEFINE_bool("debias", True, "Also ask with the replies swapped and average.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of which items list the better reply first.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Rows through the model at a time.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "PM only: longer conversations are cut.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def main(argv: list[str]) -> None:
    quiet_libraries()
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if not _CHECKPOINT.value:
            raise ConfigError("--checkpoint is required")
        if not _HHH_DIR.value and not _HH_RLHF_DIR.value:
            raise ConfigError("give --hhh_dir and/or --hh_rlhf_dir")
        for name, d in (("--hhh_dir", _HHH_DIR.value), ("--hh_rlhf_dir", _HH_RLHF_DIR.value)):
            if d and not os.path.isdir(d):
                raise ConfigError(f"{name}={d}: not a directory")
        few_shot = ""
        if _CONSTITUTION.value:
            few_shot = feedback.few_shot(constitution.load(_CONSTITUTION.value), cot=False)
        mesh = sharding.make_mesh(sharding.MeshConfig())
        result = hhh.evaluate(
            _CHECKPOINT.value,
            mesh,
            _HHH_DIR.value,
            _HH_RLHF_DIR.value,
            kind="pm" if _PM.value else "feedback",
            style=_STYLE.value,
            n_hh=None if _N_HH.value < 0 else _N_HH.value,
            question=_QUESTION.value,
            debias=_DEBIAS.value,
            few_shot=few_shot,
            seed=_SEED.value,
            batch_size=_BATCH.value,
            seq_len=_SEQ_LEN.value,
        )
    except (ConfigError, FileNotFoundError) as e:
        fail(one_line(e))
    result["constitution"] = _CONSTITUTION.value
    print(hhh.table(result))
    print(f"{result['seconds']:.0f} s")
    if _OUT.value:
        write_json(_OUT.value, result)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
