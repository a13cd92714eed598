"""``cai.seeds``: the headline table's mean and range over seeds' summary files, and its errors."""

import json

import pytest

from cai import seeds


def summary(harmless, helpful, base_helpful=0.9):
    def figures(h, u):
        return {"harmless_rate": h, "helpful_rate": u, "explained_refusal_rate": h / 2,
                "evasive_rate": 0.0, "deflected_rate": 0.01,
                "slices": {"adversarial": {"harmless_rate": h - 0.1,
                                           "explained_refusal_rate": h / 4}}}  # fmt: skip

    return {"base": {"test": figures(0.05, base_helpful)},
            "rl_cai": {"test": figures(harmless, helpful)},
            "sl_cai": {"test": figures(0.9, 0.8)}, "paired": {"x": 1},
            "preference_model": {"test": {"harmlessness": {"accuracy": 0.9}}}}  # fmt: skip


def write(tmp_path, name, value):
    (tmp_path / name).mkdir()
    (tmp_path / name / "summary.json").write_text(json.dumps(value))
    return str(tmp_path / name)


def test_mean_range_and_per_seed_ratio_to_base(tmp_path, capsys):
    dirs = [
        write(tmp_path, "s0", summary(0.99, 0.81)),
        write(tmp_path, "s1", summary(0.95, 0.9, 1.0)),
    ]
    out = tmp_path / "seeds.json"
    assert seeds.main([*dirs, f"--out={out}"]) == 0
    agg = json.loads(out.read_text())
    assert agg["columns"] == ["base", "sl_cai", "rl_cai"]  # recipe order; PMs left out
    rl = agg["models"]["rl_cai"]
    assert rl["0:harmless"] == {"mean": pytest.approx(0.97), "min": 0.95, "max": 0.99,
                                "per_seed": [0.99, 0.95]}  # fmt: skip
    assert rl["1:— adversarial"]["max"] == pytest.approx(0.89)
    # the ratio is taken per seed, then averaged: (0.81 / 0.9 + 0.9 / 1.0) / 2
    assert rl["3:helpful / base"]["mean"] == pytest.approx((0.9 + 0.9) / 2)
    printed = capsys.readouterr().out
    assert "over 2 seeds" in printed and "0.97 [0.95, 0.99]" in printed


def test_bad_workdirs_are_one_line_errors(tmp_path, capsys):
    good = write(tmp_path, "s0", summary(0.99, 0.81))
    assert seeds.main([good, str(tmp_path / "nope")]) == 2
    assert "nope/summary.json: no summary.json" in capsys.readouterr().err
    partial = summary(0.9, 0.8)
    del partial["rl_cai"]
    assert seeds.main([good, write(tmp_path, "s1", partial)]) == 2
    assert "s1/summary.json: no rl_cai.test figures" in capsys.readouterr().err
    (tmp_path / "s2").mkdir()
    (tmp_path / "s2" / "summary.json").write_text("{")
    assert seeds.main([good, str(tmp_path / "s2")]) == 2
    assert "s2/summary.json: not JSON" in capsys.readouterr().err
