"""Cost model (parameters, FLOPs, latency table), the expected cost and its gradient, budget fitting,
budgeted search and the cost report."""

import json
import math
import random
from argparse import Namespace

import pytest
import torch
from helpers import run_module

from fastnas import cost
from fastnas.cli import pipeline
from fastnas.cost import CostModel, EvalShape, expected_cost, fit_genotype, measure, measure_genotype
from fastnas.infra.errors import ConfigError
from fastnas.search.budget import FORMS, BudgetTerm
from fastnas.space.genotype import Genotype, published, random_genotype
from fastnas.space.primitives import PRIMITIVES
from fastnas.space.sampler import make_sampler
from fastnas.space.topology import CELL_TYPES, genotype_edges

SMALL = EvalShape(channels=8, layers=5)
E = 14


def _edge_primitives(prims=PRIMITIVES):
    return {c: [list(prims)] * E for c in CELL_TYPES}


def test_darts_v2_published_costs():
    g = published("DARTS_V2")
    params = CostModel("params", EvalShape())
    # DARTS' count (utils.count_parameters_in_MB skips the auxiliary head): 3,349,342
    assert params.genotype_cost(g) == 3_349_342
    assert measure_genotype(g, EvalShape(), "params") == 3_349_342
    flops = CostModel("flops", EvalShape())
    assert flops.genotype_cost(g) == measure_genotype(g, EvalShape(), "flops") == 528_359_040


def test_op_costs_by_hand():
    # sep_conv_3x3, C=16 at 32x32: two (depthwise 3x3 + pointwise 1x1) blocks and their BNs
    assert measure.op_macs("sep_conv_3x3", 16, 1, 32) == 2 * (16 * 9 * 1024 + 16 * 16 * 1024)
    assert measure.op_params("sep_conv_3x3", 16, 1) == 2 * (16 * 9 + 16 * 16 + 2 * 16)
    # skip at stride 2 is FactorizedReduce: two 1x1 convs C -> C/2 at half the side, and a BN
    assert measure.op_macs("skip_connect", 16, 2, 32) == 2 * (16 * 8 * 256)
    assert measure.op_params("max_pool_3x3", 16, 1) == 0 and measure.op_macs("avg_pool_3x3", 16, 2, 32) == 0


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_table_sum_is_exact_for_any_genotype(metric):
    model = CostModel(metric, SMALL)
    rng = random.Random(3)
    for _ in range(5):
        g = random_genotype(rng)
        assert model.genotype_cost(g) == measure_genotype(g, SMALL, metric)
    g = published("PDARTS")
    assert model.genotype_cost(g) == measure_genotype(g, SMALL, metric)


def _alpha_for(genotype: Genotype, strong: float = 30.0):
    """Alphas whose distribution puts all mass on `genotype`: chosen edges on their op, the others on 'none'."""
    alphas = {}
    for cell in CELL_TYPES:
        a = torch.zeros(E, len(PRIMITIVES), dtype=torch.float64)
        a[:, PRIMITIVES.index("none")] = strong
        for e, op in genotype_edges(getattr(genotype, cell)):
            a[e] = 0
            a[e, PRIMITIVES.index(op)] = strong
        alphas[cell] = a
    return alphas


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_expected_cost_of_a_sure_genotype_is_its_cost(metric):
    model = CostModel(metric, SMALL)
    tables = model.table(_edge_primitives())
    for g in (published("DARTS_V2"), random_genotype(random.Random(1))):
        probs = {c: torch.softmax(a, -1) for c, a in _alpha_for(g).items()}
        got = float(expected_cost(probs, tables, _edge_primitives(), model.fixed))
        assert got == pytest.approx(model.genotype_cost(g), rel=1e-9)


@pytest.mark.parametrize("sampler", ["gumbel-hard", "softmax", "dirichlet"])
def test_expected_cost_gradient_matches_finite_differences(sampler):
    model = CostModel("params", SMALL)
    tables = model.table(_edge_primitives())
    s = make_sampler(sampler, tau=1.0)
    torch.manual_seed(0)
    alphas = {c: (0.5 * torch.randn(E, len(PRIMITIVES), dtype=torch.float64)).requires_grad_() for c in CELL_TYPES}

    def f():
        probs = {c: s.expected_probabilities(a) for c, a in alphas.items()}
        return expected_cost(probs, tables, _edge_primitives(), model.fixed) / 1e4

    f().backward()
    eps = 1e-6
    for cell in CELL_TYPES:
        a = alphas[cell]
        for e, k in [(0, 4), (3, 1), (9, 7), (13, 5), (5, 0)]:
            with torch.no_grad():
                a[e, k] += eps
                up = float(f())
                a[e, k] -= 2 * eps
                down = float(f())
                a[e, k] += eps
            assert a.grad[e, k].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-7), (cell, e, k)


def test_penalty_forms_push_the_expected_cost():
    model = CostModel("params", SMALL)
    net = Namespace(steps=4, named_arch_parameters=lambda: alphas)
    alphas = {c: torch.zeros(E, len(PRIMITIVES), requires_grad=True) for c in CELL_TYPES}
    s = make_sampler("softmax")
    conv = PRIMITIVES.index("sep_conv_5x5")
    for form in FORMS:
        pen = BudgetTerm(model, target=1.0, form=form, strength=1.0)  # far over: every form pushes down
        pen.bind(_edge_primitives())
        for a in alphas.values():
            a.grad = None
        pen(torch.tensor(2.0), net, s).backward()
        # the costliest op's logit gets a positive gradient (gradient descent lowers it)
        assert all(float(a.grad[:, conv].min()) > 0 for a in alphas.values()), form
    # absolute pulls up when under the target
    pen = BudgetTerm(model, target=1e9, form="absolute")
    pen.bind(_edge_primitives())
    for a in alphas.values():
        a.grad = None
    pen(torch.tensor(2.0), net, s).backward()
    assert all(float(a.grad[:, conv].max()) < 0 for a in alphas.values())


def test_fit_genotype_meets_the_budget_with_the_fewest_losses():
    model = CostModel("params", SMALL)
    g = published("DARTS_V2")
    torch.manual_seed(0)
    probs = {c: torch.softmax(torch.randn(E, len(PRIMITIVES)), -1) for c in CELL_TYPES}
    full = model.genotype_cost(g)
    target = model.fixed + 0.6 * (full - model.fixed)
    fitted, moves = fit_genotype(g, probs, _edge_primitives(), model, target, max_skip=2)
    fitted.validate()
    assert moves and model.genotype_cost(fitted) <= target < full
    assert measure_genotype(fitted, SMALL, "params") == model.genotype_cost(fitted)
    assert sum(op == "skip_connect" for op, _ in fitted.normal) <= 2
    for cell in CELL_TYPES:  # still two distinct inputs per node
        pairs = getattr(fitted, cell)
        assert all(pairs[2 * i][1] != pairs[2 * i + 1][1] for i in range(4))
    # within budget already: untouched
    same, none = fit_genotype(g, probs, _edge_primitives(), model, full, max_skip=2)
    assert same == g and none == []
    # an impossible target: as cheap as it gets, and says so by staying over
    low, _ = fit_genotype(g, probs, _edge_primitives(), model, 1.0, max_skip=2)
    assert model.genotype_cost(low) == pytest.approx(cost.cheapest_cost(model, _edge_primitives()), rel=0.05)


def test_fit_channels_and_parse_amount():
    g = published("DARTS_V2")
    C = cost.fit_channels(g, EvalShape(), "params", 2.0e6)
    assert C is not None and C < 36
    assert CostModel("params", EvalShape(C)).genotype_cost(g) <= 2.0e6
    assert CostModel("params", EvalShape(C + 1)).genotype_cost(g) > 2.0e6
    assert cost.parse_amount("2.5M", "t") == 2.5e6 and cost.parse_amount("600m", "t") == 6e8
    assert cost.parse_amount(3, "t") == 3.0 and cost.parse_amount("1e3k", "t") == 1e6
    for bad in ("-1", "0", "abc", "2.5X", -3, 0, True, "nan"):
        with pytest.raises(ConfigError):
            cost.parse_amount(bad, "target_params")


def test_latency_table_is_cached(tmp_path):
    path = tmp_path / "lat.json"
    setting = cost.LatencySetting("cpu", batch_size=2, repeats=3)
    shape = EvalShape(channels=2, layers=3)
    table = cost.LatencyTable(setting, path)
    model = CostModel("latency", shape, table)
    g = published("DARTS_V2")
    predicted = model.genotype_cost(g)
    assert predicted > 0 and math.isfinite(predicted)
    table.save()
    keys = json.loads(path.read_text())
    assert keys and all(k.startswith(setting.key()) for k in keys)
    again = cost.LatencyTable(setting, path)
    assert CostModel("latency", shape, again).genotype_cost(g) == predicted and again.measured == 0


# ----------------------------------------------------------------------------- the search with a budget
# The smoke preset on fewer images: 8 steps per epoch, a warm-up and a search epoch per stage.
TINY = ["--preset", "smoke", "--embedded-size", "256", "--epochs", "2", "2", "2", "--warmup-epochs", "1", "1", "1",
        "--no-plots"]


def _search(tmp_path, name, *extra):
    from fastnas.cli.search import main

    out = tmp_path / name
    assert main([*TINY, "--seed", "1", "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text()), [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_budgeted_search_is_cheaper_than_unconstrained(tmp_path):
    free, free_rows = _search(tmp_path, "free")
    model = CostModel("params", SMALL)
    free_cost = model.genotype_cost(Genotype.from_dict(free["genotype"]))
    target = model.fixed + 0.5 * (free_cost - model.fixed)
    tight, rows = _search(tmp_path, "tight", "--target-params", str(int(target)), "--cost-penalty", "linear",
                          "--cost-strength", "5")
    b = tight["budget"]
    assert b["metric"] == "params" and b["target"] == int(target) and b["meets_budget"]
    final = Genotype.from_dict(tight["genotype"])
    assert model.genotype_cost(final) == b["cost"] <= target < free_cost
    assert all(r["expected_cost"] is not None and r["cost_target"] == int(target) for r in rows)
    assert all(r["expected_cost"] is None for r in free_rows)
    # the penalty itself moves the distribution: lower expected cost than the free search at the end of stage 1
    # (same seed, same candidates), before any pruning could make the two differ
    model_rows = [r for r in rows if r["stage"] == 1]
    probs = {c: torch.tensor(free_rows[len(model_rows) - 1]["op_probabilities"][c]["p"]) for c in CELL_TYPES}
    tables = model.table(_edge_primitives())
    free_expected = float(expected_cost(probs, tables, _edge_primitives(), model.fixed))
    assert model_rows[-1]["expected_cost"] < free_expected


@pytest.mark.slow  # a whole search (about 13 s): the default tier stays under 5 minutes on 2 cores
def test_budget_fit_channels(tmp_path):
    model = CostModel("params", SMALL)
    # strength 0: the cost term does nothing, so the derived cell is over and only the channels can fit it
    summary, _ = _search(tmp_path, "ch", "--target-params", str(int(model.fixed * 1.05)), "--budget-fit", "channels",
                         "--cost-strength", "0")
    b = summary["budget"]
    assert b["fit"] == "channels" and b["eval_channels"] < 8 and b["meets_budget"]
    g = Genotype.from_dict(summary["genotype"])
    assert measure_genotype(g, EvalShape(b["eval_channels"], 5), "params") == b["cost"] <= b["target"]


@pytest.mark.parametrize("args, message", [
    (["--target-params", "-5"], "target_params must be a finite number > 0"),
    (["--target-params", "0"], "target_params must be a finite number > 0"),
    (["--target-flops", "lots"], "target_flops: expected a number"),
    (["--target-params", "1k"], "target_params 1.000k is unreachable"),
    (["--target-params", "1M", "--target-flops", "1G"], "one budget at a time"),
    (["--cost-strength", "-1", "--target-params", "1M"], "'cost_strength' must be >= 0"),
    (["--target-latency-ms", "5", "--latency-device", "tpu"], "latency_device must be cpu or cuda"),
])
def test_bad_budgets_fail_with_one_line(tmp_path, capsys, args, message):
    from fastnas.cli.search import main

    # in-process: the CLI's own entry point (exit code and stderr), without a fresh interpreter per case
    assert main([*TINY, "--out", str(tmp_path / "bad"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()  # refused before anything ran


def test_train_report_cost_prints_the_published_count():
    r = run_module("fastnas.train", ["--genotype", "DARTS_V2", "--report-cost"])
    assert r.returncode == 0, r.stderr
    assert "3,349,342" in r.stdout and "528.36M multiply-adds" in r.stdout


def test_cost_cli_and_pipeline_budget_options(tmp_path):
    r = run_module("fastnas.cost", ["--genotype", "DARTS_V2", "PDARTS", "--channels", "8", "--layers", "5",
                                    "--json", str(tmp_path / "c.json")])
    assert r.returncode == 0, r.stderr
    reports = json.loads((tmp_path / "c.json").read_text())
    assert reports["DARTS_V2"]["params"] == measure_genotype(published("DARTS_V2"), SMALL, "params")
    args = Namespace(target_params="50k", target_flops=None, target_latency_ms=None, budget_fit="channels",
                     train_config=None)
    opts = pipeline._budget_options(args, "quick")
    assert opts == {"target_params": "50k", "eval_channels": 8, "eval_layers": 5, "budget_fit": "channels"}
    args.target_params = None
    assert pipeline._budget_options(args, "quick") == {}


@pytest.mark.parametrize("line, message", [
    ("budget_fit: foo", "'foo' is not one of exchange, channels, report"),
    ("cost_penalty: cubic", "'cubic' is not one of linear, absolute, log"),
    ("target_params: .nan", "expected a number"),
    ("arch_order: 3", "3 is not one of 1, 2"),
])
def test_bad_values_in_yaml_fail_like_the_command_line(tmp_path, capsys, line, message):
    from fastnas.cli.search import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(line + "\n")
    assert main([*TINY, "--config", str(cfg), "--out", str(tmp_path / "bad")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_log_penalty_multiplier_stays_positive_for_every_target_and_cost():
    """The FBNet form multiplies the cross-entropy by (E / T) ** strength: positive for any cost and target,
    1 at the target and increasing in the cost, so the architecture step never ascends the loss. The old
    ``1 + s * log(E / T)`` was -0.011 for an 8M-parameter target at C=36, 20 cells, uniform alphas."""
    model = CostModel("params", SMALL)
    ratios = torch.tensor([1e-9, 1e-3, 0.1, 0.5, 1.0, 2.0, 1e3, 1e9], dtype=torch.float32)
    for strength in (0.1, 1.0, 5.0):
        term = BudgetTerm(model, target=1.0, form="log", strength=strength)
        m = term.multiplier(ratios)
        assert bool((m > 0).all()), (strength, m)
        assert float(term.multiplier(torch.tensor(1.0))) == 1.0
        assert bool((m[1:] >= m[:-1]).all())  # more cost, a larger factor
    big = CostModel("params", EvalShape(36, 20))  # the case: 8M parameters, uniform alphas
    term = BudgetTerm(big, target=8e6, form="log", strength=1.0)
    term.bind(_edge_primitives())
    alphas = {c: torch.zeros(E, len(PRIMITIVES), requires_grad=True) for c in CELL_TYPES}
    net = Namespace(steps=4, named_arch_parameters=lambda: alphas)
    sampler = make_sampler("softmax")
    ratio = float(term.expected(net, sampler).detach()) / term.target
    assert 1 + math.log(ratio) < 0  # the old form's factor here: the case the issue measured
    assert float(term(torch.tensor(2.0), net, sampler).detach()) > 0


def test_budget_weighs_edges_by_pcdarts_betas_as_derivation_does():
    """With edge normalization, derivation ranks edges by op probability times the normalised beta; the
    expected cost weighs a node's edges the same way (and passes the cost's gradient to the betas), and
    the fit trades those scores."""
    from fastnas.search.budget import BudgetTerm
    from fastnas.space.derive import edge_scores
    from fastnas.space.supernet import SuperNet

    model = CostModel("params", SMALL)
    net = SuperNet(channels=4, layers=3, edge_norm=True)
    term = BudgetTerm(model, target=1e5, form="linear")
    term.bind(net.edge_primitives)
    sampler = make_sampler("softmax")
    conv, pool = PRIMITIVES.index("sep_conv_5x5"), PRIMITIVES.index("max_pool_3x3")
    with torch.no_grad():  # node 2: edge 0 offers a big convolution, edge 1 a free pool
        for a in (net.alpha_normal, net.alpha_reduce):
            a.zero_()
            a[0, conv] = a[1, pool] = 10.0

    def node2_weighted_to(edge):
        with torch.no_grad():
            for b in (net.beta_normal, net.beta_reduce):
                b.zero_()
                b[edge] = 10.0  # node 2's softmax over edges 0, 1 puts its weight on `edge`
        return float(term.expected(net, sampler).detach())

    assert node2_weighted_to(0) > node2_weighted_to(1)  # the betas move the expected cost
    term(torch.tensor(1.0), net, sampler).backward()
    assert net.beta_normal.grad is not None and float(net.beta_normal.grad.abs().sum()) > 0
    probs = net.probabilities(sampler)
    scored = edge_scores(net, probs)
    w = net.edge_weights()["normal"].detach()
    torch.testing.assert_close(scored["normal"], probs["normal"] * w[:, None])


def test_latency_budget_is_judged_by_the_measurement_and_refitted(tmp_path, monkeypatch):
    """The lookup table sums per-op times; a whole network is slower. A fit that meets the budget by the
    table but not by the measurement is refitted against a target scaled by the table's error, and the
    report says what was measured (never 'within' on the table's word alone)."""
    import fastnas.cost.fit as fit

    setting = cost.LatencySetting("cpu", batch_size=1, repeats=2)
    model = CostModel("latency", EvalShape(channels=2, layers=3), cost.LatencyTable(setting, tmp_path / "lat.json"))
    g = published("DARTS_V2")
    eps = _edge_primitives()
    probs = {c: torch.full((14, len(eps[c][0])), 1 / len(eps[c][0])) for c in CELL_TYPES}
    overhead = 1.5  # the whole network, measured: 1.5x its table sum (fixed part included)
    monkeypatch.setattr(fit, "measure_genotype", lambda gen, shape, metric, lat: overhead * CostModel(
        "latency", shape, model.latency, reduce_cell=gen.reduce_cell).genotype_cost(gen))
    derived = model.genotype_cost(g)
    target = 0.5 * (model.fixed + derived) * overhead  # reachable once the overhead is known
    final, rep = fit.fit_to_budget(model, target, g, probs, eps, max_skip=2)
    assert rep["measured_latency_ms"] == pytest.approx(overhead * rep["cost"])
    assert rep["table_error"] == pytest.approx(1 / overhead - 1)
    assert rep["meets_budget"] == (rep["measured_latency_ms"] <= target)
    assert rep["meets_budget"] and rep.get("refits", 0) >= 1 and rep["fit_target"] < target
    lines = "\n".join(cost.budget_report_lines(rep))
    assert "measured" in lines and "within budget" in lines and "-33% off" in lines
    # a target below what the cheapest network measures: OVER, said in the lines, never "within"
    _, rep = fit.fit_to_budget(model, model.fixed * overhead * 0.5, g, probs, eps, max_skip=2)
    assert not rep["meets_budget"] and "OVER budget" in "\n".join(cost.budget_report_lines(rep))
