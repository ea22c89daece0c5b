"""The significance test: outcomes round-trip, Holm, the test's level at 3 and 5 seeds, its power, and the
table's marks on simulated benchmarks (dfrd_bench/simulate.py); results/calibration/ has the full run."""
import numpy as np
import pytest
from click.testing import CliRunner

from dfrd_bench.cli import main
from dfrd_bench.inference import RunEval, compare, holm, paired, seeds_needed, welch_test
from dfrd_bench.metrics import decode_outcomes, encode_outcomes, summarize
from dfrd_bench.simulate import simulate_runs, write_benchmark


def _groups(runs, attack):
    a = [RunEval.from_entry(r["attacks"][attack]) for r in runs if r["method"] == "ferd"]
    b = [RunEval.from_entry(r["attacks"][attack]) for r in runs if r["method"] == "fast"]
    return a, b


def test_outcomes_round_trip_and_refuse_a_corrupt_block():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 997)
    correct = rng.random(997) < 0.4
    entry = summarize(y, np.where(correct, y, (y + 1) % 10), 10)
    out = encode_outcomes(y, correct, 10, "sha")
    bits = decode_outcomes(out, entry["per_class_n"])
    assert [int(b.sum()) for b in bits] == np.diag(entry["confusion"]).tolist()
    assert np.array_equal(np.concatenate(bits), np.concatenate([correct[y == c] for c in range(10)]))
    with pytest.raises(ValueError):
        decode_outcomes({**out, "bits": out["bits"][:9]}, entry["per_class_n"])
    with pytest.raises(ValueError):
        decode_outcomes(out, [n + 9 for n in entry["per_class_n"]])


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []


def test_welch_needs_two_seeds_and_widens_with_spread():
    assert welch_test([1.0], [0.0, 0.1]) is None
    tight = welch_test([10.0, 10.2, 9.8], [7.0, 7.2, 6.8])
    loose = welch_test([5.0, 10.0, 15.0], [2.0, 7.0, 12.0])
    assert tight.p < 0.001 and loose.p > 0.3 and tight.diff == pytest.approx(loose.diff)
    assert tight.low < 3.0 < tight.high


@pytest.mark.slow
@pytest.mark.parametrize("seed_sd,seeds", [(0.0, 3), (2.0, 3), (4.0, 3), (4.0, 5)])
def test_false_positive_rate_is_at_most_the_nominal_level(seed_sd, seeds):
    """Two identical methods: a test at 5% fires in at most 5% of comparisons (+ Monte-Carlo slack:
    3 binomial standard errors of the rate at 5% over the comparisons made)."""
    fired = total = 0
    for rep in range(40):
        runs = simulate_runs({"ferd": 0.0, "fast": 0.0}, seeds, seed_sd, seed=1000 * seeds + rep)
        for attack in ("clean", "pgd20"):
            a, b = _groups(runs, attack)
            assert paired(a, b)
            for metric in ("avg", "worst", "nsd"):
                fired += compare(a, b, metric).p < 0.05
                total += 1
    assert fired / total <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / total)


@pytest.mark.slow
def test_power_on_a_true_five_point_difference():
    """A true 5-point shift of every class (so of the average), per-class seed sd 2, 3 seeds: the average
    is marked at 5% in at least 80% of simulations."""
    hits = total = 0
    for rep in range(20):
        runs = simulate_runs({"ferd": 5.0, "fast": 0.0}, 3, 2.0, seed=7000 + rep)
        for attack in ("clean", "pgd20"):
            t = compare(*_groups(runs, attack), "avg")
            hits += t.p < 0.05 and t.diff > 0
            total += 1
    assert hits / total >= 0.8


def test_pairing_the_images_sharpens_the_test():
    runs = simulate_runs({"ferd": 1.0, "fast": 0.0}, 3, 0.5, seed=3)
    a, b = _groups(runs, "clean")
    with_pairs = compare(a, b, "avg")
    for r in a + b:
        r.bits = None          # the same numbers without outcomes: the unpaired (conservative) path
    without = compare(a, b, "avg")
    assert with_pairs.paired and not without.paired
    assert with_pairs.diff == pytest.approx(without.diff) and with_pairs.se < without.se


def test_seeds_needed_grows_as_the_effect_shrinks():
    big = welch_test([10.0, 12.0, 14.0], [6.0, 8.0, 10.0])
    small = welch_test([10.0, 12.0, 14.0], [9.0, 11.0, 13.0])
    assert 3 <= seeds_needed(big) < seeds_needed(small)
    assert seeds_needed(welch_test([1.0, 2.0], [1.0, 2.0])) is None     # no difference: no number of seeds


@pytest.mark.slow
def test_table_marks_on_null_benchmarks_stay_within_the_level(tmp_path):
    """`dfrd-bench table --ci` on simulated benchmarks of two identical methods (3 seeds, per-class seed sd
    4, 1,000 images per class): FERD's cells are marked in at most 7% (results/calibration: 80 benchmarks)."""
    marked = cells = 0
    for b in range(12):
        folder = write_benchmark(simulate_runs({"ferd": 0.0, "fast": 0.0}, 3, 4.0, seed=90 + b), tmp_path / f"b{b}")
        out = CliRunner().invoke(main, ["table", "--table", "1", "--attacks", "clean,pgd20", "--ci",
                                        "--results", str(folder)])
        assert out.exit_code == 0, out.output
        row = next(line for line in out.output.splitlines() if "| FERD |" in line)
        metric_cells = [c for c in row.split("|")[1:-1]][3:9]
        assert len(metric_cells) == 6
        marked += sum(("▲" in c) or ("▼" in c) for c in metric_cells)
        cells += 6
    assert marked / cells <= 0.07
