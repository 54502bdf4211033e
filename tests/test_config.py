"""Config loading: inheritance, overrides and every kind of mistake a user makes."""

import pytest

from visionkit import load_config
from visionkit.config import parse_override
from visionkit.errors import ConfigError
from visionkit.registry import Registry, RegistryError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def base_tree(tmp_path):
    write(tmp_path / "_base_" / "data.yaml", "data:\n  batch_size: 8\n  mean: [0.1, 0.2, 0.3]\n  image_size: 32\n")
    write(tmp_path / "_base_" / "opt.yaml", "train:\n  optimizer:\n    name: adam\n    lr: 0.5\n")
    return tmp_path


def test_base_chain_merges_dicts_and_replaces_lists(base_tree):
    cfg_path = write(base_tree / "exp" / "a.yaml",
                     "_base_: [../_base_/data.yaml, ../_base_/opt.yaml]\n"
                     "data:\n  mean: [0.5, 0.5, 0.5]\ntrain:\n  optimizer:\n    lr: 0.01\n")
    cfg = load_config(cfg_path)
    assert cfg.data.batch_size == 8  # from the base
    assert cfg.data.mean == [0.5, 0.5, 0.5]  # list replaced, not merged
    assert cfg.train.optimizer.name == "adam" and cfg.train.optimizer.lr == 0.01  # dict merged
    assert cfg.data.num_workers == 2  # schema default filled in


def test_base_as_single_string_and_nested(base_tree):
    write(base_tree / "mid.yaml", "_base_: _base_/data.yaml\ndata:\n  batch_size: 16\n")
    cfg = load_config(write(base_tree / "top.yaml", "_base_: mid.yaml\n"))
    assert cfg.data.batch_size == 16 and cfg.data.image_size == 32


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_overrides_parse_yaml_scalars(base_tree):
    cfg = load_config(base_tree / "_base_" / "opt.yaml",
                      ["train.optimizer.lr=1e-3", "train.epochs=7", "data.mean=[0.2,0.2,0.2]",
                       "model.backbone.weights=null", "train.optimizer.nesterov=true"])
    assert cfg.train.optimizer.lr == pytest.approx(1e-3) and isinstance(cfg.train.optimizer.lr, float)
    assert cfg.train.epochs == 7
    assert cfg.data.mean == [0.2, 0.2, 0.2]
    assert cfg.model.backbone.weights is None
    assert cfg.train.optimizer.nesterov is True


def test_exponent_float_in_file(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "train:\n  optimizer:\n    lr: 1e-3\n    weight_decay: 5E-5\n"))
    assert cfg.train.optimizer.lr == pytest.approx(1e-3)
    assert cfg.train.optimizer.weight_decay == pytest.approx(5e-5)


@pytest.mark.parametrize("text,expect", [
    ("modle:\n  backbone:\n    name: resnet18\n", ["c.yaml", "unknown key 'modle'", "did you mean 'model'"]),
    ("model:\n  backbone:\n    nmae: resnet18\n", ["unknown key 'model.backbone.nmae'", "did you mean 'name'"]),
    ("train:\n  optimizer:\n    lr: 0.1\n    momentun: 0.9\n", ["train.optimizer.momentun", "'momentum'"]),
])
def test_unknown_key_at_any_depth_names_file_path_and_suggestion(tmp_path, text, expect):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "c.yaml", text))
    for part in expect:
        assert part in str(e.value)


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    write(tmp_path / "base.yaml", "data:\n  batchsize: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "top.yaml", "_base_: base.yaml\n"))
    assert "base.yaml" in str(e.value) and "'data.batchsize'" in str(e.value)
    assert "did you mean 'batch_size'" in str(e.value)


def test_unknown_override_key_names_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: unknown key 'train.epohcs'.*'epochs'"):
        load_config(write(tmp_path / "c.yaml", ""), ["train.epohcs=3"])


@pytest.mark.parametrize("text,expect", [
    ("train:\n  epochs: ten\n", "'train.epochs' must be an integer, got 'ten'"),
    ("train:\n  epochs: 2.5\n", "'train.epochs' must be an integer"),
    ("data:\n  mean: 0.5\n", "'data.mean' must be a list of numbers"),
    ("train:\n  optimizer:\n    nesterov: 3\n", "'train.optimizer.nesterov' must be true or false"),
    ("model: resnet18\n", "'model' must be a mapping"),
])
def test_wrong_type(tmp_path, text, expect):
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(".", r"\.")):
        load_config(write(tmp_path / "c.yaml", text))


@pytest.mark.parametrize("text,expect", [
    ("train:\n  optimizer:\n    name: sgdd\n", "did you mean 'sgd'"),
    ("model:\n  backbone:\n    name: resnet19\n", "did you mean 'resnet18'"),
    ("task: clasification\n", "did you mean 'classification'"),
    ("train:\n  epochs: 0\n", "'train.epochs' must be >= 1"),
    ("data:\n  channels: 1\n", "'data.mean' has 3 values but data.channels is 1"),
])
def test_bad_values(tmp_path, text, expect):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "c.yaml", text))
    assert expect in str(e.value) and "c.yaml" in str(e.value)


def test_duplicate_key_in_one_mapping(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "c.yaml", "train:\n  epochs: 3\n  seed: 1\n  epochs: 4\n"))
    assert "duplicate key 'epochs'" in str(e.value) and "c.yaml" in str(e.value)
    assert "line 4" in str(e.value)


def test_python_tags_are_refused(tmp_path):
    text = "train:\n  epochs: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="python tags are refused"):
        load_config(write(tmp_path / "c.yaml", text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_config_with_no_settings_is_refused_unless_overrides_give_some(tmp_path):
    """A file saved empty by mistake would otherwise train a classifier with every default."""
    path = write(tmp_path / "c.yaml", "# to fill in\n")
    with pytest.raises(ConfigError, match=r"c.yaml' holds no settings .*configs/quickstart.yaml"):
        load_config(path)
    assert load_config(path, ["train.epochs=3"]).train.epochs == 3


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.epochs")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "train:\n  epochs: 3\n"))
    again = load_config(write(tmp_path / "resolved.yaml", cfg.to_yaml()))
    assert again.to_dict() == cfg.to_dict()


def test_registry_unknown_name_lists_close_ones_and_refuses_duplicates():
    reg = Registry("widget")
    reg.register("resnet18", obj=lambda: 1)
    reg.register("resnet34", obj=lambda: 2)
    with pytest.raises(RegistryError, match="did you mean 'resnet18'"):
        reg.get("resnet81")
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("resnet18", obj=lambda: 3)
