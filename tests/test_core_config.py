import pytest

from nanogpt_core.config import STAGES, SCALE_PRESETS, ConfigError, ModelConfig, default_scale, stage_config


def test_gpt2_stage_is_the_2019_recipe():
    cfg = stage_config("gpt2", "toy")
    m, t = cfg.model, cfg.train
    assert (m.pos_emb, m.norm, m.mlp, m.bias, m.tie_embeddings, m.attn_backend) == ("learned", "layernorm", "gelu", True, True, "naive")
    assert (t.optimizer, t.schedule, t.loader) == ("adamw", "cosine", "stream")
    assert (m.n_layer, m.n_embd, m.seq_len) == (SCALE_PRESETS["toy"]["n_layer"], 256, 256)


def test_ladder_order_matches_design():
    assert list(STAGES) == ["gpt2", "flash-attention", "compile", "muon", "modern-block", "value-embeddings", "bos-loader", "packing"]


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match=r"n_head=5 does not divide n_embd=256.*allowed n_head"):
        stage_config("gpt2", "toy", n_head=5)


def test_window_larger_than_sequence_is_refused():
    with pytest.raises(ConfigError, match=r"short_window=1.5.*larger than the sequence"):
        ModelConfig(short_window=1.5).validate()


def test_bad_window_pattern_names_the_field():
    with pytest.raises(ConfigError, match="window_pattern='SXL'"):
        ModelConfig(window_pattern="SXL").validate()


@pytest.mark.parametrize("field, value", [("norm", "batchnorm"), ("attn_backend", "fa2"), ("mlp", "swiglu")])
def test_choice_errors_list_allowed_values(field, value):
    with pytest.raises(ConfigError, match=rf"{field}='{value}' is not allowed; choose one of"):
        ModelConfig(**{field: value}).validate()


def test_unknown_stage_and_scale():
    with pytest.raises(ConfigError, match="stage='gpt3'.*'gpt2', 'flash-attention'"):
        stage_config("gpt3", "toy")
    with pytest.raises(ConfigError, match="scale='huge'.*'toy', 'gpu', 'speedrun'"):
        stage_config("gpt2", "huge")


def test_unknown_override_field():
    with pytest.raises(ConfigError, match="unknown config field 'n_layers'"):
        stage_config("gpt2", "toy", n_layers=3)


def test_negative_steps_rejected():
    with pytest.raises(ConfigError, match="steps=0 must be > 0"):
        stage_config("gpt2", "toy", steps=0)


def test_speedrun_scale_env(monkeypatch):
    monkeypatch.setenv("SPEEDRUN_SCALE", "gpu")
    assert default_scale() == "gpu"
    assert stage_config("gpt2").model.n_layer == 12
    monkeypatch.setenv("SPEEDRUN_SCALE", "laptop")
    with pytest.raises(ConfigError, match="SPEEDRUN_SCALE='laptop'"):
        default_scale()


def test_every_stage_at_every_scale_is_valid():
    for stage in STAGES:
        for scale in ("toy", "gpu", "speedrun"):
            cfg = stage_config(stage, scale)
            assert cfg.stage == stage and cfg.scale == scale


def test_each_stage_adds_its_switches_to_the_stage_before():
    names = list(STAGES)
    for prev, stage in zip(names, names[1:]):
        before, after = stage_config(prev, "toy").to_dict(), stage_config(stage, "toy").to_dict()
        changed = {k: v for part in ("model", "train") for k, v in after[part].items() if before[part][k] != v}
        assert changed == {k: v for k, v in STAGES[stage].switches.items() if before["model"].get(k, before["train"].get(k)) != v}
        assert STAGES[stage].chapter and STAGES[stage].technique


def test_config_round_trips_through_dict():
    from nanogpt_core.config import Config

    cfg = stage_config("gpt2", "toy", steps=7)
    assert Config.from_dict(cfg.to_dict()) == cfg
