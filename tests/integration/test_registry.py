"""The MLflow model registry in an embedded SQLite store: register a toy (copied) or a ref (by reference) and
load it back as models:/name/version, unknown versions, and `modeldiff register`."""

import shutil

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from modeldiff import cli
from modeldiff.config import load_config
from modeldiff.models import check_comparable, load_model, vocabulary_key
from modeldiff.platform.model_registry import (
    IDENTITY_TAG,
    REF_TAG,
    TOKENIZER_TAG,
    check_by_reference,
    register_model,
    resolve_model_uri,
    screening_policy,
)
from support import TINY, logits
from support.registry import by_reference, craft_version


@pytest.fixture
def registry(tmp_path, monkeypatch, cache):
    """An embedded SQLite tracking store and registry, with its artifacts under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the default experiment's artifact root is ./mlruns
    mlflow.set_tracking_uri(uri)
    yield MlflowClient()
    mlflow.set_tracking_uri(previous)


def test_register_a_toy_and_load_it_back(registry, cache):
    cfg = load_config("toy", TINY)
    original = load_model("toy:small", cfg)
    version = register_model("toy:small", "toy-small", cfg)
    assert (version.name, str(version.version)) == ("toy-small", "1")  # int since MLflow 3
    assert version.tags[REF_TAG] == "toy:small" and version.tags[IDENTITY_TAG] == original.identity
    # toys have no tokenizer: the tag keys their id range and BOS, so toys of one vocabulary find each other
    assert version.tags[TOKENIZER_TAG] == vocabulary_key(original) and version.tags[TOKENIZER_TAG].startswith("ids:")
    assert vocabulary_key(load_model("toy:large", cfg)) == vocabulary_key(original)
    assert vocabulary_key(load_model("toy:small", load_config("toy", TINY + " space.vocab_size=5"))) != vocabulary_key(
        original
    )
    run = registry.get_run(version.run_id)
    assert run.data.tags["modeldiff.entry_point"] == "register" and run.info.status == "FINISHED"
    info = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/model/modeldiff_ref.json")
    assert info["identity"] == original.identity and info["copied"] is True
    assert info["space"] == {"length": 4, "n_tokens": 4, "bos_token_id": 4}

    loaded = load_model("models:/toy-small/1", cfg)
    assert loaded.identity == original.identity and loaded.ref == "models:/toy-small/1"
    assert loaded.space == original.space and loaded.path == cache / "registry" / "toy-small" / "1"
    assert torch.equal(logits(loaded), logits(original))
    check_comparable(original, loaded)
    # self-contained: the toy cache can go, the version still loads (from its download, kept for reuse)
    shutil.rmtree(cache / "toy")
    registry.set_registered_model_alias("toy-small", "champion", "1")
    by_alias = load_model("models:/toy-small@champion", cfg)
    assert by_alias.identity == original.identity and torch.equal(logits(by_alias), logits(original))
    assert not (cache / "toy").exists()


def test_register_by_reference_and_a_noise_copy(registry, cache):
    cfg = load_config("toy", TINY)
    original = load_model("toy:small", cfg)
    ref_version = register_model("toy:small", "by-ref", cfg, copy=False)
    assert resolve_model_uri("models:/by-ref/1") == ("toy:small", original.identity)
    assert load_model("models:/by-ref/1", cfg).identity == original.identity
    # by reference, the ref must still load the registered model: another toy config makes another model
    with pytest.raises(
        ValueError,
        match=r"models:/by-ref/1 was registered by reference to 'toy:small', which now "
        r"loads a different model .*register the model again",
    ):
        load_model("models:/by-ref/1", load_config("toy", TINY + " toy.lr=0.001"))
    assert str(ref_version.version) == "1"
    # a model made in-process is saved into the version
    noisy = load_model("noise:1e-2:seed=1:toy:small", cfg)
    register_model("noise:1e-2:seed=1:toy:small", "noisy", cfg)
    back = load_model("models:/noisy/1", cfg)
    assert back.identity == noisy.identity and torch.equal(logits(back), logits(noisy))


@pytest.mark.parametrize(
    "uri, match",
    [
        (
            "models:/nope/1",
            r"registry URI 'models:/nope/1' names no model version .*modeldiff register REF --name NAME",
        ),
        ("models:/toy-small/7", r"registry URI 'models:/toy-small/7' names no model version"),
        ("models:/toy-small@gold", r"registry URI 'models:/toy-small@gold' names no model version"),
        ("models:/toy-small/latest", r"version 'latest' is not a number"),
        ("models:/", r"cannot read the registry URI 'models:/': write models:/<name>/<version>"),
    ],
)
def test_unknown_registry_versions(registry, uri, match):
    cfg = load_config("toy", TINY)
    register_model("toy:small", "toy-small", cfg)
    with pytest.raises(ValueError, match=match):
        load_model(uri, cfg)


def test_cli_register(registry, capsys):
    assert cli.main(["register", "toy:small", "--name", "from-cli", "--config", "toy", "--overrides", TINY]) == 0
    assert "from-cli version 1" in capsys.readouterr().out
    assert (
        cli.main(["register", "toy:small", "--name", "from-cli", "--no-copy", "--config", "toy", "--overrides", TINY])
        == 0
    )
    assert "from-cli version 2" in capsys.readouterr().out
    assert "register" in cli.usage()
    with pytest.raises(SystemExit):
        cli.main(["register", "toy:nope", "--name", "x", "--config", "toy", "--overrides", TINY])
    assert "unknown toy model 'toy:nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["register", "toy:small", "--name", "a/b", "--config", "toy", "--overrides", TINY])
    assert "choose a name without '/'" in capsys.readouterr().err


def test_screening_limits_what_a_by_reference_version_opens(registry, cache, tmp_path):
    """Under screening_policy() a by-reference version's ref is checked against the config's `screening` section before
    anything is opened, and only safetensors weights load; outside it, a user's own registry loads as before."""
    cfg = load_config("toy", TINY)
    toy_dir = load_model("toy:small", cfg).path
    models = tmp_path / "models"
    shutil.copytree(toy_dir, models / "toy")
    register_model(str(models / "toy"), "local", cfg, copy=False)
    local = MlflowClient().get_model_version("local", "1").tags
    craft_version("hub", by_reference("some-org/some-model"), local[TOKENIZER_TAG])
    with screening_policy():
        with pytest.raises(
            ValueError,
            match=r"^models:/local/1 was registered by reference to the path '.*/models/toy', outside the directories "
            r"screening may open \(screening.directories: none\): register the model with its weights copied",
        ):
            load_model("models:/local/1", cfg)
        allowed = load_config("toy", TINY + f" screening.directories=[{models}]")
        assert load_model("models:/local/1", allowed).identity == local[IDENTITY_TAG]
        with pytest.raises(ValueError, match=r"hub id 'some-org/some-model', which screening may not load"):
            load_model("models:/hub/1", cfg)
        hubs = load_config("toy", TINY + " screening.hub_ids=[some-org/*]").screening
        assert check_by_reference("models:/hub/1", "some-org/some-model", hubs) is None  # allowed (no hub here to load)
        assert check_by_reference("models:/x/1", "noise:1e-3:toy:small", cfg.screening) is None
        with pytest.raises(ValueError, match=r"registered by reference to the path '/etc'"):
            check_by_reference("models:/x/1", "noise:1e-3:/etc", hubs)
        # pickle-based weights in an allowed directory: refused before transformers opens them
        from safetensors.torch import load_file

        torch.save(load_file(models / "toy" / "model.safetensors"), models / "toy" / "pytorch_model.bin")
        (models / "toy" / "model.safetensors").unlink()
        with pytest.raises(ValueError, match=r"^models:/local/1: model '.*' holds pickle-based files"):
            load_model("models:/local/1", allowed)


def test_a_version_that_refers_to_itself_is_one_line(registry):
    cfg = load_config("toy", TINY)
    craft_version("loop", by_reference("models:/loop/1"), "ids:x")
    with pytest.raises(ValueError, match=r"^models:/loop/1 refers to itself \(it was registered by reference to a "):
        load_model("models:/loop/1", cfg)
    craft_version("ping", by_reference("models:/pong/1"), "ids:x")
    craft_version("pong", by_reference("noise:1e-3:models:/ping/1"), "ids:x")
    with (
        screening_policy(),
        pytest.raises(ValueError, match=r"^models:/ping/1 refers to itself through models:/pong/1 \(it was registered"),
    ):
        load_model("models:/ping/1", cfg)
