"""TrainConfig is the one declaration of the training options: ``foresight train``'s flags
and the Dagster model assets' config are derived from it, with its defaults and docs."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from foresight.pipelines.cli import build_parser, config_from_flags
from foresight.pipelines.model_assets import (
    OfflineRLAssetConfig,
    TrainAssetConfig,
    _peer_config,
    _train_config,
)
from foresight.training.loop.config import TRAIN_OPTIONS, OfflineRLTrainConfig, TrainConfig
from foresight.training.loop.options import field_docs, options


def parse(*flags: str):
    return build_parser().parse_args(["train", "world", "--dataset", "spread", *flags])


def test_every_option_has_a_docstring_and_a_default():
    docs = field_docs(TrainConfig)
    assert set(docs) == {f.name for f in fields(TrainConfig)}
    assert all(o.help for o in options(TrainConfig))


def test_the_cli_defaults_are_the_dataclass_defaults():
    assert config_from_flags(TrainConfig, parse()) == TrainConfig()


def test_every_option_is_a_cli_flag_with_its_docstring():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    for o in options(TrainConfig):
        assert o.name in by_dest, o.name
        text = by_dest[o.name].help
        assert text.startswith("world, behavior") and o.help.replace("%", "%%") in text, o.name
    config = config_from_flags(
        TrainConfig,
        parse(
            "--epochs", "3", "--lr", "0.01", "--context", "4", "--no-calibrate", "--device", "cpu"
        ),
    )
    assert config == TrainConfig(epochs=3, lr=0.01, context=4, calibrate=False, device="cpu")


def test_every_family_has_its_options_flags_and_nothing_else():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    for o in options(OfflineRLTrainConfig):  # one flag per field, shared names once
        assert "offline-rl" in helps[o.name] and o.help.replace("%", "%%") in helps[o.name]
    assert "(default: 0.002); offline-rl:" in helps["lr"]  # each class's own default
    assert helps["seed"].startswith("world, behavior, offline-rl: Seeds")  # same words once
    parse = lambda kind, *flags: build_parser().parse_args(  # noqa: E731
        ["train", kind, "--dataset", "d", *flags]
    )
    assert config_from_flags(OfflineRLTrainConfig, parse("offline-rl")) == OfflineRLTrainConfig()
    config = config_from_flags(
        OfflineRLTrainConfig, parse("offline-rl", "--steps", "7", "--lr", "0.1", "--context", "2")
    )
    assert config == OfflineRLTrainConfig(steps=7, lr=0.1, context=2)
    with pytest.raises(ValueError, match="--calibrate, --epochs are not options of offline-rl"):
        config_from_flags(OfflineRLTrainConfig, parse("offline-rl", "--epochs", "2", "--calibrate"))
    with pytest.raises(ValueError, match="--steps is not an option of world, behavior training"):
        config_from_flags(TrainConfig, parse("world", "--steps", "2"))
    assert set(TRAIN_OPTIONS.values()) == {TrainConfig, OfflineRLTrainConfig}


def test_a_flag_outside_its_choices_is_refused():
    with pytest.raises(SystemExit):
        parse("--device", "tpu")


def test_the_dagster_defaults_are_the_dataclass_defaults():
    config = TrainAssetConfig()
    assert _train_config(config) == TrainConfig()
    schema = TrainAssetConfig.model_json_schema()["properties"]
    for o in options(TrainConfig):
        assert getattr(config, o.name) == o.default, o.name
        assert schema[o.name]["description"] == o.help, o.name
    assert set(asdict(TrainConfig())) < set(TrainAssetConfig.model_fields)


def test_the_offline_rl_peers_dagster_config_is_its_dataclass():
    assert _peer_config(OfflineRLAssetConfig()) == OfflineRLTrainConfig()
    schema = OfflineRLAssetConfig.model_json_schema()["properties"]
    for o in options(OfflineRLTrainConfig):
        assert schema[o.name]["description"] == o.help, o.name
    given = OfflineRLAssetConfig(dataset="spread@3", steps=7, cql_alpha=0.5)
    assert _peer_config(given) == OfflineRLTrainConfig(steps=7, cql_alpha=0.5)


def test_dagster_run_config_reaches_the_train_config():
    config = TrainAssetConfig(epochs=2, context=3, max_steps_per_epoch=5, calibrate=False)
    assert _train_config(config) == TrainConfig(
        epochs=2, context=3, max_steps_per_epoch=5, calibrate=False
    )
