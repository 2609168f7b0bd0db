"""Tests for smdyn.experiments.config: validation messages, --set overrides, round trips, shipped configs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from smdyn.experiments.config import (
    Config,
    DataConfig,
    ModelConfig,
    MonitorConfig,
    OptimConfig,
    RescaleConfig,
    RunConfig,
    ScheduleConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
    scale_steps,
    shipped_configs,
)
from smdyn.experiments.models import MODELS


def test_empty_document_gives_the_defaults() -> None:
    assert config_from_dict({}) == Config()


def test_unknown_section_names_it_and_lists_the_sections() -> None:
    with pytest.raises(
        ValueError, match=r"unknown section 'optimizer'.*allowed sections: run, data, model, optim"
    ):
        config_from_dict({"optimizer": {"lr": 0.1}})


def test_unknown_top_level_key() -> None:
    with pytest.raises(ValueError, match="unknown top-level key 'steps'"):
        config_from_dict({"steps": 10})


def test_unknown_key_names_section_key_and_allowed_keys() -> None:
    with pytest.raises(ValueError, match="unknown key") as info:
        config_from_dict({"optim": {"learning_rate": 0.1}})
    msg = str(info.value)
    assert "[optim] unknown key 'learning_rate'" in msg
    for allowed in ("name", "lr", "momentum", "weight_decay", "nesterov", "betas"):
        assert allowed in msg


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"optim": {"lr": "0.1"}}, "[optim] lr must be a number, got str '0.1'"),
        ({"run": {"steps": 10.5}}, "[run] steps must be an integer, got float 10.5"),
        ({"run": {"steps": True}}, "[run] steps must be an integer, got bool True"),
        ({"optim": {"nesterov": 1}}, "[optim] nesterov must be true or false, got int 1"),
        ({"optim": {"betas": [0.9]}}, "[optim] betas must be a list of two numbers"),
        ({"schedule": {"milestones": [10, 2.5]}}, "[schedule] milestones must be a list of integers"),
        ({"monitor": {"params": 3}}, '[monitor] params must be "auto" or a list of strings, got int 3'),
        ({"data": {"options": [1]}}, "[data] options must be a table, got list [1]"),
        ({"run": 5}, "[run] must be a table, got int 5"),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(raw: dict, fragment: str) -> None:
    with pytest.raises(TypeError) as info:
        config_from_dict(raw)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"optim": {"lr": -0.1}}, "[optim] lr = -0.1: must be a finite number > 0"),
        ({"optim": {"lr": math.inf}}, "[optim] lr = inf"),
        ({"optim": {"momentum": 1.0}}, "[optim] momentum = 1.0: must be in [0, 1)"),
        ({"optim": {"weight_decay": -1e-4}}, "[optim] weight_decay = -0.0001"),
        ({"optim": {"name": "lion"}}, "[optim] name = 'lion': must be one of sgd, adam, adamw"),
        ({"optim": {"name": "adam", "momentum": 0.9}}, "[optim] momentum = 0.9: applies to sgd only"),
        ({"optim": {"nesterov": True}}, "[optim] nesterov = True: needs momentum > 0"),
        ({"run": {"steps": 0}}, "[run] steps = 0: must be >= 1"),
        ({"run": {"name": "a b"}}, "[run] name = 'a b'"),
        ({"run": {"device": "gpu"}}, "[run] device = 'gpu'"),
        ({"run": {"log_every": 0}}, "[run] log_every = 0: must be >= 1"),
        (
            {"data": {"name": "imagenet"}},
            "[data] name = 'imagenet': unknown data set; known: digits, mnist1d",
        ),
        ({"data": {"batch_size": 0}}, "[data] batch_size = 0: must be >= 1"),
        ({"data": {"options": {"seed": 3}}}, "set seed and root as [data] keys"),
        ({"model": {"name": "vgg"}}, "[model] name = 'vgg': unknown model; known: cnn1d"),
        ({"model": {"options": {"num_classes": 3}}}, "num_classes comes from the data set"),
        ({"schedule": {"kind": "linear"}}, "[schedule] kind = 'linear': must be one of constant"),
        ({"schedule": {"kind": "multistep"}}, "needs at least one milestone"),
        (
            {"schedule": {"kind": "multistep", "milestones": [500, 300]}},
            "[schedule] milestones = [500, 300]: must be strictly increasing",
        ),
        ({"schedule": {"milestones": [5]}}, "only used by kind = 'multistep', not 'constant'"),
        ({"schedule": {"kind": "step"}}, "kind = 'step' needs step_size >= 1"),
        ({"schedule": {"gamma": 0.0}}, "[schedule] gamma = 0.0"),
        ({"monitor": {"granularity": "layer"}}, "[monitor] granularity = 'layer'"),
        ({"monitor": {"window": 1}}, "[monitor] window = 1: must be >= 2"),
        ({"monitor": {"params": "all"}}, "[monitor] params = 'all'"),
        ({"monitor": {"params": []}}, "an empty list monitors nothing"),
        ({"rescale": {"mode": "always"}}, "[rescale] mode = 'always': must be 'drops' or 'continuous'"),
        ({"optim": {"name": "adam"}, "rescale": {"enabled": True}}, "[rescale] enabled = True: Adam with L2"),
    ],
)
def test_bad_value_names_section_key_value_and_what_is_allowed(raw: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"\] \w+ = ") as info:
        config_from_dict(raw)
    assert fragment in str(info.value)


def test_all_problems_of_a_file_are_reported_together() -> None:
    with pytest.raises(ValueError, match="3 problems") as info:
        config_from_dict({"run": {"stepz": 1}, "optim": {"lrr": 0.1}, "extra": {}})
    msg = str(info.value)
    assert "3 problems" in msg
    assert "'stepz'" in msg and "'lrr'" in msg and "'extra'" in msg


def test_values_are_converted_to_the_field_types() -> None:
    cfg = config_from_dict(
        {
            "optim": {"lr": 1, "betas": [0, 1 / 2]},
            "schedule": {"kind": "multistep", "milestones": [10, 20]},
            "run": {"steps": 30},
            "monitor": {"params": ["conv1.weight", "a.weight+a.bias"]},
        }
    )
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.0, 0.5)
    assert cfg.schedule.milestones == (10, 20)
    assert cfg.monitor.params == ("conv1.weight", "a.weight+a.bias")


# ------------------------------------------------------------------------------------------- overrides


def test_overrides_parse_toml_values_and_nested_options() -> None:
    raw = {"optim": {"lr": 0.1}, "model": {"name": "cnn1d", "options": {"width": 32}}}
    out = apply_overrides(
        raw,
        [
            "optim.lr=0.05",
            "model.options.width=8",
            "data.name=digits",
            'run.name="x-1"',
            "schedule.milestones=[10, 20]",
            "optim.nesterov=true",
            "optim.momentum = 0.9",
        ],
    )
    assert out["optim"] == {"lr": 0.05, "nesterov": True, "momentum": 0.9}
    assert out["model"]["options"] == {"width": 8}
    assert out["data"]["name"] == "digits"
    assert out["run"]["name"] == "x-1"
    assert out["schedule"]["milestones"] == [10, 20]
    assert raw["optim"] == {"lr": 0.1}, "the input must not be modified"
    assert raw["model"]["options"] == {"width": 32}


@pytest.mark.parametrize("bad", ["optim.lr", "lr=0.1", ".lr=0.1", "optim.=1", "optim.lr=[1,"])
def test_malformed_override_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="--set"):
        apply_overrides({}, [bad])


def test_override_with_unknown_key_is_caught_by_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 0.1\n")
    with pytest.raises(ValueError, match=r"\[optim\] unknown key 'lrate'") as info:
        load_config(path, ["optim.lrate=0.2"])
    assert str(path) in str(info.value)
    with pytest.raises(TypeError, match=r"\[optim\] lr must be a number, got str 'fast'"):
        load_config(path, ["optim.lr=fast"])
    assert load_config(path, ["optim.lr=0.2"]).optim.lr == 0.2


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[optim\nlr = 0.1\n")
    with pytest.raises(ValueError, match=r"broken\.toml: not valid TOML"):
        load_config(path)


def test_missing_config_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fig3_sgdm"):
        load_config(tmp_path / "nope.toml")


def test_shipped_config_by_name() -> None:
    assert load_config("fig3_sgdm") == load_config(shipped_configs()["fig3_sgdm"])


# ------------------------------------------------------------------------------------------- round trip


def _everything_changed() -> Config:
    return Config(
        run=RunConfig(
            name="rt.1",
            seed=7,
            steps=1234,
            eval_every=100,
            log_every=7,
            checkpoint_every=500,
            threads=3,
            device="auto",
        ),
        data=DataConfig(
            name="shapes",
            root='/data/with "quotes" and ünïcode',
            seed=3,
            batch_size=17,
            options={"size": 16, "difficulty": 0.1 + 0.2, "train_size": 5000, "augment": True, "x y": "z"},
        ),
        model=ModelConfig(name="resnet18_cifar", options={"width": 8}),
        optim=OptimConfig(name="adamw", lr=3e-4, weight_decay=1e-5, betas=(0.8, 0.95)),
        schedule=ScheduleConfig(kind="multistep", milestones=(100, 900), gamma=0.3, warmup=50),
        monitor=MonitorConfig(
            every=3, granularity="channel", window=50, flush_every=10, tol=0.05, params=("a.weight+a.bias",)
        ),
        rescale=RescaleConfig(enabled=True, mode="continuous"),
    )


@pytest.mark.parametrize("cfg", [Config(), _everything_changed()], ids=["defaults", "everything"])
def test_save_config_round_trip(tmp_path: Path, cfg: Config) -> None:
    path = save_config(cfg, tmp_path / "config.toml", header="a header\nover two lines")
    text = path.read_text()
    assert text.startswith("# a header\n# over two lines\n")
    back = load_config(path)
    assert back == cfg
    # complete: every key of every section is written (except an unset root)
    doc = tomllib.loads(text)
    for f in dataclasses.fields(Config):
        section = getattr(cfg, f.name)
        expected = {k.name for k in dataclasses.fields(section) if getattr(section, k.name) is not None}
        assert set(doc[f.name]) == expected


def test_save_config_rejects_other_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cfg must be a Config"):
        save_config({"run": {}}, tmp_path / "c.toml")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- shipped


_EXPECTED = {
    "fig3_sgd",
    "fig3_sgdm",
    "fig5_multistage",
    "fig5_rescaled",
    "fig6_sgdm",
    "fig6_rescaled",
    "fig6_adam",
    "digits_collapse",
}


def test_the_paper_experiments_are_shipped() -> None:
    names = set(shipped_configs())
    assert names >= _EXPECTED
    assert sum(n.startswith("fig4_") for n in names) >= 4
    full = {n for n in names if n.endswith("_full")}
    assert full, "full-size GPU configs are shipped"
    data = {load_config(n).data.name for n in full}
    assert {"cifar10", "imagefolder"} <= data


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_validates_and_round_trips(tmp_path: Path, name: str) -> None:
    cfg = load_config(name)
    assert cfg.run.name == name, "run.name matches the file name, so run folders are recognisable"
    assert cfg.model.name in MODELS
    assert load_config(save_config(cfg, tmp_path / "c.toml")) == cfg
    text = shipped_configs()[name].read_text()
    if name.endswith("_full"):
        assert cfg.data.name in ("cifar10", "imagefolder")
        assert cfg.run.device == "auto"
    else:
        assert cfg.data.name in ("digits", "mnist1d", "shapes", "text")
        assert cfg.run.device == "cpu" and cfg.run.threads == 2
        assert "runtime" in text.split("[run]")[0].lower(), "the header states the expected runtime"


def test_fixed_lr_configs_relax_within_the_run() -> None:
    """The fixed-LR runs must reach equilibrium: several relaxation times (1−α)/(2λη) fit in the run."""
    for name in ("fig3_sgd", "fig3_sgdm", *(n for n in shipped_configs() if n.startswith("fig4_"))):
        cfg = load_config(name)
        o = cfg.optim
        assert cfg.schedule.kind == "constant"
        relax = (1 - o.momentum) / (2 * o.lr * o.weight_decay)
        assert cfg.run.steps >= 4 * relax, name


def test_multistage_configs_differ_only_in_rescaling() -> None:
    for plain, rescaled in (("fig5_multistage", "fig5_rescaled"), ("fig6_sgdm", "fig6_rescaled")):
        a, b = load_config(plain), load_config(rescaled)
        assert len(a.schedule.milestones) >= 2 and a.schedule.gamma == pytest.approx(0.1)
        assert not a.rescale.enabled and b.rescale.enabled
        strip = {"run": dataclasses.replace(b.run, name=a.run.name), "rescale": a.rescale}
        assert dataclasses.replace(b, **strip) == a


# ------------------------------------------------------------------------------------------- scale_steps


def test_scale_steps_scales_every_step_count() -> None:
    cfg = config_from_dict(
        {
            "run": {"steps": 10_000, "eval_every": 1000, "log_every": 50, "checkpoint_every": 0},
            "schedule": {"kind": "multistep", "milestones": [3000, 6000], "warmup": 200},
            "monitor": {"window": 200},
        }
    )
    quick = scale_steps(cfg, 0.1)
    assert quick.run.steps == 1000
    assert quick.run.eval_every == 100 and quick.run.log_every == 5 and quick.run.checkpoint_every == 0
    assert quick.schedule.milestones == (300, 600)
    assert quick.schedule.warmup == 20
    assert quick.monitor.window == 150  # half of the shortest stage (300 steps)
    assert scale_steps(cfg, 1.0) == cfg


@pytest.mark.parametrize("factor", [0, -1, math.nan, math.inf])
def test_scale_steps_rejects_bad_factors(factor: float) -> None:
    with pytest.raises(ValueError, match="factor"):
        scale_steps(Config(), factor)
