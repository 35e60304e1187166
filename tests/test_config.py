"""Configuration (fastnas.infra.config and each layer's option groups): every option passes one
validation layer on the command line and in YAML alike, bad values are one `error:` line and exit 2
before any training step, option groups check themselves, and --resume has one rule."""

import dataclasses

import pytest
from helpers import SMOKE, TRAIN, fails

from fastnas.cli import search, train
from fastnas.infra.config import build_config
from fastnas.infra.errors import ConfigError

# ------------------------------------------------------------------------ one validation layer
BAD_SEARCH = [
    (["--lr", "nan"], "'lr' must be a finite number"),
    (["--lr", "inf"], "'lr' must be a finite number"),
    (["--lr", "-0.1"], "'lr' must be > 0"),
    (["--weight-decay", "nan"], "'weight_decay' must be a finite number"),
    (["--weight-decay", "-1"], "'weight_decay' must be >= 0"),
    (["--momentum", "inf"], "'momentum' must be a finite number"),
    (["--momentum", "-0.5"], "'momentum' must be >= 0"),
    (["--grad-clip", "nan"], "'grad_clip' must be a finite number"),
    (["--arch-lr=-3e-4"], "'arch_lr' must be >= 0"),
    (["--tau-start", "nan"], "'tau_start' must be a finite number"),
    (["--seed", str(2**70)], "'seed'"),
    (["--seed", "-1"], "'seed' must be >= 0"),
    (["--device", "cudaXYZ"], "device must be auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--max-skip", "-5"], "'max_skip' must be >= -1"),
    (["--dist-timeout", "nan"], "'dist_timeout' must be a finite number"),
    (["--image-size", "0"], "'image_size' must be >= 8"),
    (["--skip-dropout", "0", "1.5", "0"], "'skip_dropout' must be < 1"),
    (["--arch-betas", "0.5", "1.5"], "'arch_betas' must be < 1"),
    (["--primitives", "none", "skip_connect", "--ops-kept", "2", "2", "1"], "with 'none' among the candidates"),
    (["--resume", "/no/such/run"], "no checkpoint"),
]


@pytest.mark.parametrize("argv, fragment", BAD_SEARCH, ids=[" ".join(a)[:40] for a, _ in BAD_SEARCH])
def test_search_rejects_bad_values(argv, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    fails(search.main, [*SMOKE, *argv, "--out", str(out)], fragment, capsys)
    assert not out.exists(), "a refused config must not create its run directory"


BAD_TRAIN = [
    (["--lr", "1e400"], "'lr' must be a finite number"),
    (["--auxiliary-weight", "-1"], "'auxiliary_weight' must be >= 0"),
    (["--cutout", "1000"], "cutout=1000 is larger than the 32x32 images"),
    (["--layers", "1"], "no cell for the auxiliary head"),
    (["--batch-size", "0"], "'batch_size' must be >= 1"),
    (["--drop-path", "1.0"], "'drop_path' must be < 1"),
    (["--epochs", str(2**64)], "'epochs'"),
    (["--compile-mode", "reduce-overhead"], "--compile-mode reduce-overhead needs --compile"),
]


@pytest.mark.parametrize("argv, fragment", BAD_TRAIN, ids=[" ".join(a)[:40] for a, _ in BAD_TRAIN])
def test_train_rejects_bad_values(argv, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    fails(train.main, [*TRAIN, *argv, "--out", str(out)], fragment, capsys)
    assert not out.exists()


BAD_YAML = [
    ("sampler: foo\n", "'sampler': 'foo' is not one of"),
    ("amp: fp8\n", "'amp': 'fp8' is not one of"),
    ("straight_through: nonsense\n", "'straight_through': 'nonsense' is not one of all, sampled"),
    # a YAML number for a string option with choices is checked against them too (it once slipped through)
    ("straight_through: 3.5\n", "'straight_through': '3.5' is not one of all, sampled"),
    ("lr: .nan\n", "'lr' must be a finite number"),
    ("momentum: -1\n", "'momentum' must be >= 0"),
    ("- a\n- b\n", "must hold a mapping"),
]


@pytest.mark.parametrize("text, fragment", BAD_YAML, ids=[t.split(":")[0].strip() for t, _ in BAD_YAML])
def test_yaml_values_pass_the_same_checks(text, fragment, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    fails(search.main, [*SMOKE, "--config", str(cfg), "--out", str(tmp_path / "run")], fragment, capsys)


def test_binary_yaml_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(bytes(range(256)) * 4)
    fails(search.main, [*SMOKE, "--config", str(cfg)], "config file", capsys)


BAD_GENOTYPES = [
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[0, 2])", "nodes 0 and 1 are the cell's inputs"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=range(0, 100000000), "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "normal_concat range(0, 100000000)"),
    ('{"normal": [["sep_conv_3x3", "0"], ["sep_conv_3x3", 1]], "normal_concat": [2], '
     '"reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}', "input must be an integer"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2, 2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "names a node twice"),
]  # (the genotype is valid in every other way: one node per cell)


@pytest.mark.parametrize("spec, fragment", BAD_GENOTYPES, ids=["input-in-concat", "huge-concat", "str-input",
                                                                 "repeated-concat"])
def test_genotype_validated_before_any_network(spec, fragment, tmp_path, capsys):
    path = tmp_path / "g.json"
    if spec.startswith("{"):
        path.write_text(spec)
        spec = str(path)
    fails(train.main, ["--genotype", spec, "--preset", "smoke", "--out", str(tmp_path / "run")], fragment, capsys)


def test_genotype_txt_written_by_search_is_accepted(tmp_path):
    from fastnas.space.genotype import PUBLISHED, Genotype

    (tmp_path / "genotype.txt").write_text(str(PUBLISHED["PDARTS"]) + "\n")
    assert train.resolve_genotype(str(tmp_path / "genotype.txt")) == PUBLISHED["PDARTS"]
    assert Genotype.load(str(tmp_path / "genotype.txt")) == PUBLISHED["PDARTS"]


def test_names_and_no_cap_in_the_python_api():
    from fastnas.space.derive import derive_genotype
    from fastnas.space.network import EvalNetwork
    from fastnas.space.supernet import SuperNet

    net = SuperNet(channels=4, layers=3)
    assert derive_genotype(net, -1) == derive_genotype(net, None)
    with pytest.raises(ValueError, match="max_skip_normal"):
        derive_genotype(net, -3)
    assert sum(p.numel() for p in EvalNetwork("PDARTS", 8, 5).parameters()) > 0


# ------------------------------------------------------------------------ run directories


# ------------------------------------------------------------------------ pipeline and evaluate




# ------------------------------------------------------------------------ option groups and resume rule
def test_refuse_changes_is_the_one_resume_rule():
    from fastnas.infra.config import refuse_changes

    saved = {"seed": 1, "device": "cpu", "epochs": [2, 2]}
    assert refuse_changes(saved, {"seed": 1, "device": "cuda"}, ("device",)) == ["device cpu -> cuda"]
    assert refuse_changes(saved, {}, ("device",)) == []
    with pytest.raises(ConfigError, match=r"--epochs \(\[2, 2\] saved, \[3, 3\] given\) cannot change \(only"):
        refuse_changes(saved, {"epochs": [3, 3]}, ("device",))
    with pytest.raises(ConfigError, match=r"--new \(None saved, 1 given\)"):  # an option the run never had
        refuse_changes(saved, {"new": 1}, ())


def test_each_option_group_checks_itself():
    """A mechanism's options are checked by its own group, whatever else the config holds."""
    from fastnas.infra.config import check_fields, validate
    from fastnas.search import MECHANISMS, SearchConfig

    assert all(issubclass(SearchConfig, m) for m in MECHANISMS)
    cfg = SearchConfig(cells=[4], channels=[6], ops_kept=[8], skip_dropout=[0.0], epochs=[1], warmup_epochs=[0],
                       partial_channels=[4])
    check_fields(cfg)
    with pytest.raises(ConfigError, match="stage 1 K=4 must divide its 6 channels"):
        validate(cfg)
    cfg = SearchConfig(dirichlet_anchor=1e-3)
    with pytest.raises(ConfigError, match="dirichlet_anchor is DrNAS' regulariser"):
        validate(cfg)
    cfg = SearchConfig(target_params="1M", target_flops="1G")
    with pytest.raises(ConfigError, match="one budget at a time"):
        validate(cfg)


# The fields of config.yaml (and of a checkpoint's config) as the release before the option groups wrote them.
PREVIOUS_SEARCH_FIELDS = (
    "accumulate amp arch_betas arch_grad_clip arch_lr arch_order arch_resample arch_travel arch_weight_decay "
    "batch_size budget_fit cells channels channels_last cost_penalty cost_strength data_dir dataset "
    "derived_eval_images deterministic device dirichlet_anchor dist_timeout download edge_norm embedded_size epochs "
    "eval_channels eval_layers fixed_reduction grad_clip image_size latency_batch latency_cache latency_device "
    "latency_dtype lr lr_min max_skip max_steps momentum ops_kept partial_channels plots preset primitives sampler "
    "seed skip_dropout straight_through target_flops target_latency_ms target_params tau_end tau_schedule tau_start "
    "train_portion warmup_epochs weight_decay workers").split()
PREVIOUS_TRAIN_FIELDS = (
    "amp auxiliary auxiliary_weight batch_size channels channels_last compile cutout data_dir dataset deterministic "
    "device dist_timeout download drop_path embedded_size epochs export genotype grad_clip image_size latency_batch "
    "latency_device layers lr lr_min max_steps momentum pin_memory plots preset report_cost seed sync_bn "
    "weight_decay workers").split()


def test_search_config_keeps_every_option_of_the_flat_format():
    """Option groups change how the config is checked, not what it holds: config.yaml and checkpoints of
    earlier runs name the same fields (besides `out`, which config.yaml leaves out)."""
    from fastnas.search import SearchConfig
    from fastnas.train import TrainConfig

    for cls, previous in ((SearchConfig, PREVIOUS_SEARCH_FIELDS), (TrainConfig, PREVIOUS_TRAIN_FIELDS)):
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "out"}
        added = ADDED_SINCE if cls is SearchConfig else {"nesterov": False, "data_on_device": True,
                                                         "scale_lr": True, "compile_mode": "default",
                                                         "cuda_graphs": False, "cudnn_benchmark": True}
        assert sorted(previous) == sorted(set(fields) - set(added))
        # an option added since defaults to what earlier runs computed, so their saved configs resume alike
        for name, old_behaviour in added.items():
            assert fields[name].default == old_behaviour, name


# Options added since that release, with the value that computes what runs before them computed.
ADDED_SINCE = {"nesterov": False, "arch_first": False, "pool_bn": True, "final_bn_relu": False,
               "derivation": "darts", "derive_from": "sampler", "stage_transition": "rebuild", "max_param_free": -1,
               # on CPU, where every saved run before it ran, it changes nothing (cudnn_benchmark on a GPU:
               # another algorithm for the same convolution, not another computation)
               "data_on_device": True, "cudnn_benchmark": True,
               # a saved config (resumed, or given to --config) names every learning rate: none is rescaled
               "scale_lr": True,
               # off: eager steps, as before
               "cuda_graphs": False, "op_graphs": False}


# ------------------------------------------------------------------ learning rates follow --batch-size
def test_batch_size_scales_untyped_learning_rates_by_the_pcdarts_rule():
    """4x DARTS' batch gives PC-DARTS' rates: SGD 0.025 -> 0.1 (linear), Adam 3e-4 -> 6e-4 (square root)."""
    from fastnas.search import PRESETS, SearchConfig

    darts, pcdarts = PRESETS["darts"], PRESETS["pcdarts"]
    cfg = build_config(SearchConfig, PRESETS, {"preset": "darts", "batch_size": 4 * darts["batch_size"]}, "darts")
    assert cfg.lr == pytest.approx(pcdarts["lr"]) and cfg.arch_lr == pytest.approx(pcdarts["arch_lr"])
    assert cfg.lr_min == pytest.approx(4 * darts["lr_min"])
    assert "lr 0.025 -> 0.1" in cfg.resolved_notes[0] and "arch_lr 0.0003 -> 0.0006" in cfg.resolved_notes[0]
    # half the batch halves the SGD rate and divides Adam's by sqrt(2)
    cfg = build_config(SearchConfig, PRESETS, {"preset": "darts", "batch_size": 32}, "darts")
    assert cfg.lr == pytest.approx(0.0125) and cfg.arch_lr == pytest.approx(3e-4 / 2**0.5)


def test_typed_learning_rates_and_the_preset_batch_are_kept(tmp_path):
    from fastnas.search import PRESETS, SearchConfig
    from fastnas.train import PRESETS as TRAIN_PRESETS
    from fastnas.train import TrainConfig

    # the preset's own batch, typed or not: nothing changes
    for cli in ({"preset": "darts"}, {"preset": "darts", "batch_size": 64}):
        cfg = build_config(SearchConfig, PRESETS, cli, "darts")
        assert (cfg.lr, cfg.lr_min, cfg.arch_lr, cfg.resolved_notes) == (0.025, 0.001, 3e-4, [])
    # a typed lr stays, and lr_min goes with it (scaled alone it could pass lr); arch_lr still scales
    cfg = build_config(SearchConfig, PRESETS, {"preset": "darts", "batch_size": 256, "lr": 0.001}, "darts")
    assert (cfg.lr, cfg.lr_min) == (0.001, 0.001) and cfg.arch_lr == pytest.approx(6e-4)
    # --no-scale-lr keeps every rate
    cfg = build_config(SearchConfig, PRESETS, {"preset": "darts", "batch_size": 256, "scale_lr": False}, "darts")
    assert (cfg.lr, cfg.arch_lr, cfg.resolved_notes) == (0.025, 3e-4, [])
    # a YAML file counts as typed: a run's saved config.yaml (every rate named) starts a run that computes alike
    (tmp_path / "c.yaml").write_text("batch_size: 256\nlr: 0.025\nlr_min: 0.001\narch_lr: 0.0003\n")
    cfg = build_config(SearchConfig, PRESETS, {"preset": "darts", "config": str(tmp_path / "c.yaml")}, "darts")
    assert (cfg.lr, cfg.arch_lr) == (0.025, 3e-4)
    # a YAML file that sets only the batch scales like --batch-size
    (tmp_path / "b.yaml").write_text("batch_size: 192\n")
    cfg = build_config(TrainConfig, TRAIN_PRESETS, {"genotype": "DARTS_V2", "config": str(tmp_path / "b.yaml")},
                       "darts")
    assert cfg.lr == pytest.approx(2 * TRAIN_PRESETS["darts"].get("lr", 0.025))


@pytest.mark.parametrize("argv, expected", [([], True), (["--no-cudnn-benchmark"], False),
                                            (["--deterministic"], False)])
def test_cudnn_autotuner_follows_the_options(tmp_path, monkeypatch, argv, expected):
    """A run sets cuDNN's autotuner from --cudnn-benchmark (on by default, as DARTS' scripts do) and
    leaves it off under --deterministic; the option is saved with the run and may change on resume."""
    import torch

    from fastnas.cli import search as search_cli
    from fastnas.cli.common import execute

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not expected)  # restored after the test
    # execute() under --deterministic turns on torch's deterministic algorithms: all restored afterwards
    was = torch.are_deterministic_algorithms_enabled()
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        launch = search_cli.launch(search_cli.parse_args(["--device", "cpu", "--out", str(tmp_path / "run"), *argv]))
        seen = execute(launch, lambda launch, run, ctx, device: torch.backends.cudnn.benchmark)
    finally:
        torch.use_deterministic_algorithms(was)
    assert seen is expected
    assert f"cudnn_benchmark: {'false' if '--no-cudnn-benchmark' in argv else 'true'}" in (
        tmp_path / "run" / "config.yaml").read_text()
    assert "cudnn_benchmark" in search_cli.MAY_CHANGE
