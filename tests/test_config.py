"""esort_jax.config: mappings into frozen dataclasses. Every error names the dotted key (with the
caller's prefix); values are coerced (ints to floats, lists to tuples) or refused, never passed
through silently; to_dict is from_dict's inverse. (Each module's own validate() rules are tested
with that module.)"""

import dataclasses
from typing import Any, Literal

import pytest

from esort_jax.config import ConfigError, from_dict, require, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    rate_hz: float = 1.0
    mode: Literal["fast", "slow"] = "fast"

    def validate(self, where: str = "inner") -> None:
        require(self.rate_hz > 0, f"{where}.rate_hz", f"must be > 0; got {self.rate_hz}")


@dataclasses.dataclass(frozen=True)
class Outer:
    count: int
    name: str = "x"
    enabled: bool = True
    scale: float = 1.0
    pair: tuple[float, float] = (0.0, 1.0)
    ids: tuple[int, ...] = ()
    names: list[str] = dataclasses.field(default_factory=list)
    limit: int | None = None
    options: dict = dataclasses.field(default_factory=dict)
    anything: Any = None
    inner: Inner = Inner()
    maybe_inner: Inner | None = None


def _error(mapping, where="cfg") -> str:
    with pytest.raises(ConfigError) as caught:
        from_dict(Outer, mapping, where)
    return str(caught.value)


def test_defaults_coercion_and_nesting():
    config = from_dict(Outer, {"count": 3.0, "scale": 2, "pair": [1, 2], "ids": [4, 5.0], "names": ("a", "b"),
                               "inner": {"rate_hz": 5, "mode": "slow"}, "maybe_inner": {}, "options": {"k": [1]}})
    assert config == Outer(count=3, scale=2.0, pair=(1.0, 2.0), ids=(4, 5), names=["a", "b"],
                           inner=Inner(rate_hz=5.0, mode="slow"), maybe_inner=Inner(), options={"k": [1]})
    assert type(config.count) is int and type(config.scale) is float and type(config.pair[0]) is float
    assert type(config.ids) is tuple and type(config.names) is list
    assert from_dict(Outer, {"count": 1}).inner == Inner() and from_dict(Outer, {"count": 1}).maybe_inner is None


def test_an_instance_of_the_class_is_returned_as_it_is():
    config = Outer(count=2)
    assert from_dict(Outer, config) is config
    assert from_dict(Outer, {"count": 1, "inner": Inner(rate_hz=3.0)}).inner == Inner(rate_hz=3.0)


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"count": 1, "colour": "red"}, "cfg.colour: unknown key for Outer (known: anything, count, enabled, ids, "
                                        "inner, limit, maybe_inner, name, names, options, pair, scale)"),
        ({}, "cfg.count: required value is missing"),
        ({"count": "3"}, "cfg.count: expected an integer; got '3'"),
        ({"count": 2.5}, "cfg.count: expected an integer; got 2.5"),
        ({"count": True}, "cfg.count: expected an integer; got True"),
        ({"count": None}, "cfg.count: expected an integer; got None"),
        ({"count": 1, "scale": "big"}, "cfg.scale: expected a number; got 'big'"),
        ({"count": 1, "scale": False}, "cfg.scale: expected a number; got False"),
        ({"count": 1, "name": 5}, "cfg.name: expected a string; got 5"),
        ({"count": 1, "enabled": "yes"}, "cfg.enabled: expected true/false; got 'yes'"),
        ({"count": 1, "enabled": 1}, "cfg.enabled: expected true/false; got 1"),
        ({"count": 1, "pair": [1, 2, 3]}, "cfg.pair: expected 2 values; got 3"),
        ({"count": 1, "pair": [1, "b"]}, "cfg.pair[1]: expected a number; got 'b'"),
        ({"count": 1, "pair": "ab"}, "cfg.pair: expected a list; got 'ab'"),
        ({"count": 1, "ids": 5}, "cfg.ids: expected a list; got 5"),
        ({"count": 1, "ids": [1, 2, 3.5]}, "cfg.ids[2]: expected an integer; got 3.5"),
        ({"count": 1, "names": ["a", 2]}, "cfg.names[1]: expected a string; got 2"),
        ({"count": 1, "limit": "ten"}, "cfg.limit: expected an integer; got 'ten'"),
        ({"count": 1, "options": [1]}, "cfg.options: expected a mapping; got [1]"),
        ({"count": 1, "inner": {"mode": "medium"}}, "cfg.inner.mode: 'medium' is not one of ['fast', 'slow']"),
        ({"count": 1, "inner": {"rate": 2}}, "cfg.inner.rate: unknown key for Inner (known: mode, rate_hz)"),
        ({"count": 1, "inner": "fast"}, "cfg.inner: expected a mapping; got str"),
        ({"count": 1, "inner": {"rate_hz": -1}}, "cfg.inner.rate_hz: must be > 0; got -1.0"),  # Inner.validate
        ({"count": 1, "maybe_inner": {"rate_hz": 0}}, "cfg.maybe_inner.rate_hz: must be > 0; got 0.0"),
        ({"count": 1, "maybe_inner": 3}, "cfg.maybe_inner: expected a mapping; got int"),
    ],
)
def test_errors_name_the_dotted_key(mapping, message):
    assert _error(mapping) == message


def test_without_a_prefix_keys_stand_alone():
    with pytest.raises(ConfigError, match=r"^inner\.mode: 'x' is not one of"):
        from_dict(Outer, {"count": 1, "inner": {"mode": "x"}})
    with pytest.raises(ConfigError, match=r"^count: required value is missing$"):
        from_dict(Outer, None)
    with pytest.raises(ConfigError, match=r"^Outer: expected a mapping; got list$"):
        from_dict(Outer, [1])
    with pytest.raises(ConfigError, match=r"^plan: expected a mapping; got Inner$"):
        from_dict(Outer, Inner(), "plan")  # a dataclass of another class is not a mapping


def test_none_means_none_where_allowed_and_defaults_for_a_section():
    config = from_dict(Outer, {"count": 1, "limit": None, "maybe_inner": None, "anything": {"a": (1,)}, "inner": None})
    assert config.limit is None and config.maybe_inner is None and config.anything == {"a": (1,)}
    assert config.inner == Inner()  # an empty YAML section (null) takes the section's defaults
    assert from_dict(Outer, {"count": 1, "limit": 7.0}).limit == 7


def test_validate_is_called_with_the_dotted_key_of_its_section():
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Recorded:
        value: int = 0

        def validate(self, where):
            seen.append(where)

    from_dict(Recorded, {}, "a.b")
    from_dict(Recorded, {})
    assert seen == ["a.b", ""]


def test_to_dict_gives_plain_data_that_builds_the_same_config():
    config = from_dict(Outer, {"count": 2, "pair": [3, 4], "ids": [1], "inner": {"mode": "slow"},
                               "maybe_inner": {"rate_hz": 2.0}, "options": {"nested": {"t": [1, 2]}}})
    plain = to_dict(config)
    assert plain == {
        "count": 2, "name": "x", "enabled": True, "scale": 1.0, "pair": [3.0, 4.0], "ids": [1], "names": [],
        "limit": None, "options": {"nested": {"t": [1, 2]}}, "anything": None,
        "inner": {"rate_hz": 1.0, "mode": "slow"}, "maybe_inner": {"rate_hz": 2.0, "mode": "fast"},
    }
    assert from_dict(Outer, plain) == config
    assert to_dict([Inner(), (Inner(mode="slow"),)]) == [{"rate_hz": 1.0, "mode": "fast"},
                                                         [{"rate_hz": 1.0, "mode": "slow"}]]
    assert to_dict(Inner) is Inner and to_dict(3) == 3  # a class, and scalars, as they are


def test_require_raises_with_the_key_only_when_the_condition_fails():
    require(True, "train.epochs", "must be >= 1")
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be >= 1$"):
        require(False, "train.epochs", "must be >= 1")
    assert issubclass(ConfigError, ValueError)


def _library_configs():
    from data_gen import SynthesisConfig
    from esort_jax.io.phy import PhyExportConfig
    from esort_jax.pipeline import PipelineConfig
    from esort_jax.realdata.baselines import BaselinesConfig
    from esort_jax.realdata.preprocess import PreprocessConfig
    from esort_jax.runtime.log import LoggerConfig
    from esort_jax.runtime.sort_benchmark import SortBenchmarkConfig

    return [PipelineConfig, SynthesisConfig, BaselinesConfig, PreprocessConfig, PhyExportConfig, LoggerConfig,
            SortBenchmarkConfig]


@pytest.mark.parametrize("cls", _library_configs(), ids=lambda cls: cls.__name__)
def test_every_library_config_round_trips_through_plain_data(cls):
    """What results.json and the cache keys record (to_dict) builds the same config again."""
    config = from_dict(cls, {}, "cfg")
    assert from_dict(cls, to_dict(config), "cfg") == config
