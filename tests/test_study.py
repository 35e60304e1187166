"""fastnas.study: random genotypes under the search's rules, the comparison arithmetic, and a tiny study
end to end with resume."""

import json
import random
from pathlib import Path

import pytest
from helpers import fails

from fastnas.cli.study import _compare, main
from fastnas.space.genotype import Genotype, random_genotype
from fastnas.space.primitives import PRIMITIVES


def test_random_genotypes_follow_the_search_rules():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        g = random_genotype(rng, PRIMITIVES, max_skip=2)
        g.validate()
        for cell in ("normal", "reduce"):
            pairs = getattr(g, cell)
            assert all(op != "none" and op in PRIMITIVES for op, _ in pairs)
            for i in range(4):
                (_, a), (_, b) = pairs[2 * i: 2 * i + 2]
                assert a != b and max(a, b) < i + 2  # two distinct earlier nodes
        assert sum(op == "skip_connect" for op, _ in g.normal) <= 2
        seen.add(str(g))
    assert len(seen) == 300
    # every op and every input choice turns up: uniform over the space, not a few favourites
    ops = {op for s in seen for op, _ in Genotype.parse(s).normal}
    assert ops == set(PRIMITIVES) - {"none"}
    assert random_genotype(random.Random(1), ["sep_conv_3x3", "skip_connect"], max_skip=0).normal[0][0] == \
        "sep_conv_3x3"


def test_comparison_ranks_and_improvement():
    out = _compare({"searched": {"gumbel-hard": 0.8, "softmax": 0.5}, "random": [0.4, 0.6, 0.7, 0.9]})
    assert out["random_mean"] == pytest.approx(0.65)
    assert out["rank"] == {"gumbel-hard": 2, "softmax": 4}
    assert out["beats_random_mean"] == {"gumbel-hard": True, "softmax": False}
    assert out["improvement"]["gumbel-hard"] == pytest.approx(0.15 / 0.65)


def test_ties_count_as_not_better():
    out = _compare({"searched": {"softmax": 0.6}, "random": [0.6, 0.5]})
    assert out["rank"]["softmax"] == 2  # level with a random cell: not ahead of it
    out = _compare({"searched": {"softmax": 0.55}, "random": [0.6, 0.5]})
    assert not out["beats_random_mean"]["softmax"]  # equal to the mean is not above it


def test_size_aware_comparison_sees_a_win_by_size_alone():
    """Random cells whose accuracy grows with log(parameters): a searched cell on their line (bigger,
    hence better) has a zero residual; one above it, a positive residual. Cells within 15% of its size
    are its similar-size comparison."""
    import math

    sizes = [1e5, 2e5, 4e5, 8e5]
    rand = [0.5 + 0.1 * math.log2(s / 1e5) for s in sizes]  # 0.5, 0.6, 0.7, 0.8
    on_line = _compare({"searched": {"s": 0.9}, "random": rand, "searched_params": {"s": 1.6e6},
                        "random_params": sizes})
    assert on_line["rank"]["s"] == 1 and on_line["size_residual"]["s"] == pytest.approx(0.0, abs=1e-9)
    above = _compare({"searched": {"s": 0.75}, "random": rand, "searched_params": {"s": 4.2e5},
                      "random_params": sizes})
    assert above["size_residual"]["s"] == pytest.approx(0.75 - (0.7 + 0.1 * math.log2(4.2e5 / 4e5)))
    assert above["similar_size"]["s"] == {"count": 1, "mean": pytest.approx(0.7), "beats_mean": True}


def test_sign_and_wilcoxon_p_values():
    from fastnas.cli.study import sign_test, wilcoxon_signed_rank

    assert sign_test(4, 5) == pytest.approx(6 / 32)  # the README's 4 of 5: p = 0.1875
    assert sign_test(5, 5) == pytest.approx(1 / 32) and sign_test(0, 5) == 1.0
    assert wilcoxon_signed_rank([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(1 / 32)  # all positive
    assert wilcoxon_signed_rank([-0.1, -0.2, -0.3, -0.4, -0.5]) == 1.0
    # ranks 1..5 by magnitude, positives at ranks 2, 3, 4, 5: W+ = 14; P(W+ >= 14) = 2/32
    assert wilcoxon_signed_rank([-0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([0.0, 0.0]) == 1.0  # ties never count as better


TINY_SEARCH = "epochs: [1, 1, 1]\nwarmup_epochs: [0, 0, 0]\nembedded_size: 128\nmax_steps: 2\n"
TINY_TRAIN = "epochs: 1\nembedded_size: 128\nmax_steps: 2\nlayers: 3\nchannels: 4\n"


@pytest.mark.slow
def test_study_end_to_end_and_resume(tmp_path):
    (tmp_path / "s.yaml").write_text(TINY_SEARCH)
    (tmp_path / "t.yaml").write_text(TINY_TRAIN)
    out = tmp_path / "study"
    args = ["--samplers", "gumbel-hard", "softmax", "--seeds", "0", "1", "--random", "2", "--search-preset", "smoke",
            "--train-preset", "smoke", "--search-config", str(tmp_path / "s.yaml"), "--train-config",
            str(tmp_path / "t.yaml"), "--out", str(out)]
    assert main(args) == 0
    study = json.loads((out / "study.json").read_text())
    assert set(study["per_seed"]) == {"0", "1"}
    for per in study["per_seed"].values():
        assert set(per["searched"]) == {"gumbel-hard", "softmax"} and len(per["random"]) == 2
        assert all(0 <= v <= 1 for v in [*per["searched"].values(), *per["random"]])
        assert 1 <= per["rank"]["softmax"] <= 3
    assert study["overall"]["seeds_done"] == 2
    md = (out / "study.md").read_text()
    assert "| seed |" in md and "searched gumbel-hard" in md
    assert (out / "study.png").stat().st_size > 1000
    # fresh random cells for every seed, each retrained with its seed; sizes recorded, the size chart drawn
    drawn = json.loads((out / "random_genotypes.json").read_text())
    assert set(drawn) == {"0", "1"} and all(len(v) == 2 for v in drawn.values()) and drawn["0"] != drawn["1"]
    assert (out / "train" / "random1-seed1" / "report.json").is_file()
    for per in study["per_seed"].values():
        assert len(per["random_params"]) == 2 and per["searched_params"]["softmax"] > 0
    assert "sign_test_p" in study["overall"]["softmax"] and "Wilcoxon" in md
    assert (out / "study_size.png").stat().st_size > 1000
    # resume: a removed report is recomputed, everything else is reused
    (out / "train" / "random0-seed1" / "report.json").unlink()
    before = (out / "train" / "random1-seed0" / "report.json").read_text()
    assert main(["--resume", str(out)]) == 0
    assert (out / "train" / "random0-seed1" / "report.json").is_file()
    assert (out / "train" / "random1-seed0" / "report.json").read_text() == before


def test_study_bad_input(tmp_path, capsys):
    assert main(["--random", "0", "--out", str(tmp_path / "x")]) == 2
    assert main(["--resume", str(tmp_path / "missing")]) == 2
    assert main(["--search-config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3


def _fake_study(seeds, accs, preset="quick"):
    from fastnas.cli.study import _overall

    per = {}
    for seed, (searched, rand) in zip(seeds, accs, strict=True):
        entry = {"searched": {"softmax": searched}, "random": rand, "search_time_s": {"softmax": 10.0},
                 "random_train_time_s": [1.0] * len(rand)}
        entry.update(_compare(entry))
        per[str(seed)] = entry
    st = {"samplers": ["softmax"], "random": 2, "dataset": "embedded", "search_preset": preset,
          "train_preset": "quick", "seeds": list(seeds), "per_seed": per}
    st["overall"] = _overall(st)
    return st


def test_merge_studies(tmp_path):
    from fastnas.cli.study import merge_studies
    from fastnas.infra.errors import ConfigError

    a = _fake_study([0, 1], [(0.6, [0.5, 0.55]), (0.4, [0.5, 0.6])])
    b = _fake_study([2], [(0.7, [0.6, 0.62])])
    m = merge_studies([a, b])
    assert m["seeds"] == [0, 1, 2]
    assert m["overall"]["softmax"]["seeds_above_random_mean"] == 2
    assert m["overall"]["softmax"]["searched_mean"] == pytest.approx((0.6 + 0.4 + 0.7) / 3)
    with pytest.raises(ConfigError, match="seed 2 appears"):
        merge_studies([b, b])
    with pytest.raises(ConfigError, match="differ in search_preset"):
        merge_studies([a, _fake_study([3], [(0.5, [0.5, 0.5])], preset="smoke")])
    for i, st in enumerate((a, b)):
        (tmp_path / f"s{i}.json").write_text(json.dumps(st))
    assert main(["--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "study.json").read_text())["seeds"] == [0, 1, 2]
    assert (tmp_path / "m" / "study.png").is_file() and "| 2 |" in (tmp_path / "m" / "study.md").read_text()
    assert main(["--merge", str(tmp_path / "nope.json"), "--out", str(tmp_path / "m2")]) == 2


def test_merge_without_out_says_where_it_wrote(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s0.json").write_text(json.dumps(_fake_study([0], [(0.6, [0.5, 0.55])])))
    assert main(["--merge", "s0.json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    where = Path(last.split(" into ")[-1])
    assert last.startswith("merged 1 studies (1 seeds) into runs/study-") and (where / "study.json").is_file()


def test_study_resume_refuses_changed_options(tmp_path, capsys):

    out = tmp_path / "s"
    out.mkdir()
    (out / "study_config.yaml").write_text("seeds: [0]\n")
    fails(main, ["--resume", str(out), "--seeds", "5", "6"], "--seeds ([0] saved, [5, 6] given)", capsys)
