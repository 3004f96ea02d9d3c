"""key=value overrides parse the same way for every config class: booleans by meaning, not by truthiness."""

import pytest

from minillava.config import ConfigError, config_from_overrides, load_config
from minillava.stage0 import Stage0Config


@pytest.mark.parametrize("text, expected", [("false", False), ("0", False), ("no", False), ("off", False),
                                            ("true", True), ("1", True), ("yes", True), ("on", True)])
def test_stage0_boolean_override_reads_its_meaning(text, expected):
    # bool("false") is True: a plain type cast would switch the option on
    assert config_from_overrides(Stage0Config, [f"lm_cells_color={text}"]).lm_cells_color is expected
    assert load_config("tiny", [f"bf16={text}"]).bf16 is expected


def test_stage0_overrides_check_keys_and_values():
    cfg = config_from_overrides(Stage0Config, ["clip_steps=12", "scenes = 40"])
    assert (cfg.clip_steps, cfg.scenes) == (12, 40)
    with pytest.raises(ConfigError, match="unknown config field 'clip_stepz'"):
        config_from_overrides(Stage0Config, ["clip_stepz=12"])
    with pytest.raises(ConfigError, match="config field 'clip_steps': expected int"):
        config_from_overrides(Stage0Config, ["clip_steps=many"])
    with pytest.raises(ConfigError, match="expected true or false"):
        config_from_overrides(Stage0Config, ["lm_cells_where=maybe"])


@pytest.mark.parametrize("text", ["false", "0", "no", " False "])
def test_both_config_classes_read_false_through_one_parser(text):
    assert load_config("tiny", [f"bf16={text}", f"pack_sequences={text}"]).bf16 is False
    assert config_from_overrides(Stage0Config, [f"lm_cells_color={text}"]).lm_cells_color is False


def test_a_stage_is_named_directly_and_keeps_the_flat_fields():
    cfg = load_config("tiny", ["stage2_lr=3e-4", "stage2_batch=16", "stage1_steps=7"])
    two, one = cfg.stage(2), cfg.stage(1)
    assert (two.lr, two.batch, two.steps, two.template) == (3e-4, 16, cfg.stage2_steps, cfg.stage2_template)
    assert one.steps == 7 and two.field("batch") == "stage2_batch"
    assert "stage2_lr" in cfg.to_dict()  # the flat names stay the command line's and config.json's keys
    with pytest.raises(AttributeError):
        two.lr = 1.0  # a read-only view: change the flat field instead
    with pytest.raises(ValueError, match="stages 1 and 2"):
        cfg.stage(3)


@pytest.mark.parametrize("override, message", [("teacher_occupied=1.5", "is a chance, from 0 to 1"),
                                               ("teacher_max_turns=1", "at least 2 turns")])
def test_teacher_settings_out_of_range_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])
