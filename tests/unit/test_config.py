"""Config loading: base + preset + dot-list overrides, strict keys, validation with fixes in the message."""

import pytest
from omegaconf import OmegaConf

from modeldiff.config import BASE, ConfigError, config_hash, flatten, load_config, split_overrides
from modeldiff.platform.stages import STAGE


def stage_hash(cfg, stage, **extra):
    return STAGE[stage].hash(cfg, **extra)


def test_unknown_key_is_an_error_naming_the_valid_ones():
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'sampler\.stepz' in overrides; valid keys under "
        r"'sampler': method, kernel, kernel_params, t_min, .*steps",
    ):
        load_config("toy", "sampler.stepz=10")
    with pytest.raises(ConfigError, match=r"unknown config key 'nope' .*top level: seed, models, space, z_range"):
        load_config("toy", "nope=1")


def test_unknown_key_in_a_preset_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  lenght: 5\n")
    with pytest.raises(ConfigError, match=rf"'space\.lenght' in {bad}.*length, vocab_size, bos_token_id"):
        load_config(bad)


def test_struct_mode_rejects_reading_unknown_keys_later():
    cfg = load_config("toy")
    with pytest.raises(Exception, match="stepz"):
        cfg.sampler.stepz  # noqa: B018


def test_overrides_string_and_list():
    assert split_overrides("space.length=6  z_range=[1.8, 2.1] lambda=0.1") == [
        "space.length=6",
        "z_range=[1.8, 2.1]",
        "lambda=0.1",
    ]
    assert split_overrides("") == [] and split_overrides(None) == []
    cfg = load_config("toy", "space.length=6 z_range=[1.8,2.1] lambda=0.1 sampler.kernel_params.step_size=2")
    assert cfg.space.length == 6 and list(cfg.z_range) == [1.8, 2.1] and cfg["lambda"] == 0.1
    assert cfg.sampler.kernel_params.step_size == 2  # kernel parameters are free-form
    assert load_config("toy", ["space.length=7"]).space.length == 7
    with pytest.raises(ConfigError, match="not key=value"):
        load_config("toy", "space.length")


@pytest.mark.parametrize("preset", ["toy", "toy-paper", "smollm2", "gpt2-25", "gpt2-100", "llama-25"])
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert cfg.models.a and cfg.models.b and cfg.z_range[0] < cfg.z_range[1]


def test_paper_presets_follow_appendix_c():
    gpt2 = load_config("gpt2-25")
    assert (gpt2.space.length, list(gpt2.z_range), gpt2.models.a, gpt2.models.b) == (
        25,
        [2.0, 4.0],
        "gpt2",
        "gpt2-medium",
    )
    assert gpt2.sampler.t_min == pytest.approx(10**-2) and gpt2.sampler.t_max == pytest.approx(10**-1.25, rel=1e-5)
    long = load_config("gpt2-100")
    assert long.space.length == 100 and list(long.z_range) == [4.0, 5.0]
    assert long.sampler.t_min == pytest.approx(10**-3.5, rel=1e-5) and long.sampler.t_max == pytest.approx(
        10**-1.3, rel=1e-5
    )
    llama = load_config("llama-25")
    assert llama.space.length == 25 and list(llama.z_range) == [3.5, 4.5]
    # the paper's T_min = 1e-6 is below z's rounding error (float32 ≈ 2e-6, bfloat16 ≈ 3e-2): 1e-5, in float32
    assert llama.sampler.t_min == pytest.approx(1e-5) and llama.sampler.t_max == 1.0 and llama.model.dtype == "float32"
    with pytest.raises(ConfigError, match=r"sampler.t_min=1e-06 is finer than z's rounding error in float32"):
        load_config("llama-25", "sampler.t_min=0.000001")
    with pytest.raises(ConfigError, match=r"in bfloat16 \(about 3e-02\).*raise sampler.t_min to at least 3e-02"):
        load_config("llama-25", "model.dtype=bfloat16")
    assert load_config("toy", "output=sum_nll sampler.t_min=0.00001").sampler.t_min == 1e-5  # L = 5: 5 × 2e-6 = 1e-5
    with pytest.raises(ConfigError, match="finer than z's rounding error"):
        load_config("toy", "output=sum_nll sampler.t_min=0.000005")  # the sum carries L times the mean's error


def test_presets_merge_over_base():
    base = OmegaConf.load(BASE)
    toy = load_config("toy")
    assert set(flatten(toy)) >= set(flatten(base)) - {"sampler.kernel_params"}
    assert (toy.space.length, toy.space.vocab_size, toy.toy.modulus) == (5, 6, 10)
    assert list(toy.z_range) == [1.3, 1.8] and toy.cross_eval.allow_empty_bins is True
    assert toy.model.dtype == "float32"  # from base
    paper = load_config("toy-paper")
    assert (paper.space.length, paper.space.vocab_size, paper.toy.modulus) == (8, 10, 30)
    assert list(paper.z_range) == [1.8, 2.1] and paper.bins.width == 0.01 and paper.sampler.t_min == 0.3
    assert (paper.sampler.ladders, paper.sampler.steps, paper.sampler.burn_in) == (80, 1500, 200)
    assert paper.cross_eval.n_draws == 100_000 and paper.toy.train_steps == 1200
    assert dict(paper.toy.archs.small) == dict(n_embd=64, n_head=4, n_layer=6)  # the paper's pair
    assert load_config("configs/toy.yaml") == toy


def test_reversed_z_range_is_one_line_with_the_fix():
    with pytest.raises(ConfigError) as e:
        load_config("toy", "z_range=[2.1,1.8]")
    msg = str(e.value)
    assert "\n" not in msg and "reversed" in msg and "z_range=[1.8,2.1]" in msg
    with pytest.raises(ConfigError, match="two numbers"):
        load_config("toy", "z_range=[1.8]")


@pytest.mark.parametrize(
    "override, match",
    [
        ("bins.width=0", r"'bins\.width' must be > 0"),
        ("bins.width=-0.1", r"'bins\.width' must be > 0"),
        ("sampler.t_min=2", r"'sampler\.t_min' must be > 0 and <= sampler\.t_max"),
        ("sampler.burn_in=5000", r"'sampler\.burn_in' must be >= 0 and < sampler\.steps"),
        ("space.length=abc", r"'space\.length' must be an integer"),
        ("space.vocab_size=1", r"'space\.vocab_size' must be >= 2 or null"),
        ("lambda=-0.1", r"'lambda' must be >= 0"),
        ("output=logits", r"'output' must be one of"),
        ("sampler.kernel=nope", r"unknown sampler\.kernel 'nope'; available: .*mh_uniform"),
        ("cross_eval.within_bin=x", r"'cross_eval\.within_bin' must be one of"),
        ("cross_eval.allow_empty_bins=3", r"must be true/false"),
        ("sampler.method=mcmc", r"'sampler\.method' must be one of \['tempering', 'ancestral'\]"),
        ("sampler.ancestral.temperatures=[1.0,0]", r"'sampler\.ancestral\.temperatures' must be a non-empty list"),
        ("sampler.ancestral.temperatures=1.0", r"'sampler\.ancestral\.temperatures' must be a list"),
        ("sampler.ancestral.n_blocks=1", r"'sampler\.ancestral\.n_blocks' must be >= 2"),
        ("sampler.ancestral.n_samples=1000", r"'sampler\.ancestral\.n_samples' must be a positive multiple of .* = 64"),
        ("sampler.ancestral.batch_size=0", r"'sampler\.ancestral\.batch_size' must be >= 1"),
    ],
)
def test_validation(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("toy", override)


def test_missing_config_names_the_presets():
    with pytest.raises(ConfigError, match=r"config 'nonexistent' not found: .*toy, toy-paper"):
        load_config("nonexistent")


def test_hashes_follow_what_each_stage_depends_on():
    cfg = load_config("toy")
    assert config_hash(cfg) == config_hash(load_config("toy")) and len(config_hash(cfg)) == 16
    assert config_hash(cfg, {"model": "x"}) != config_hash(cfg, {"model": "y"})
    lam = load_config("toy", "lambda=0.2")
    draws = load_config("toy", "cross_eval.n_draws=10")
    assert stage_hash(cfg, "sample_outdist", model="m") == stage_hash(lam, "sample_outdist", model="m")
    assert stage_hash(cfg, "sample_outdist", model="m") == stage_hash(draws, "sample_outdist", model="m")
    assert stage_hash(cfg, "cross_eval") != stage_hash(draws, "cross_eval")
    assert stage_hash(cfg, "normalize") != stage_hash(lam, "normalize")
    assert stage_hash(cfg, "sample_outdist") != stage_hash(load_config("toy", "sampler.steps=999"), "sample_outdist")
    ancestral = load_config("toy", "sampler.method=ancestral")
    assert stage_hash(cfg, "sample_outdist") != stage_hash(ancestral, "sample_outdist")
    assert stage_hash(ancestral, "sample_outdist") != stage_hash(
        load_config("toy", "sampler.method=ancestral sampler.ancestral.temperatures=[1.0,2.0]"), "sample_outdist"
    )
