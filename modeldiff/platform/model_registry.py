"""The MLflow model registry: register a model ref as a version, and resolve `models:/` URIs back to models.

A version is a `register` run whose `model/` artifact holds `modeldiff_ref.json` (ref, identity,
tokenizer hash, space) and, for models with local weights, the weights themselves, so the version stays
loadable when the cache or the original directory is gone. Hub ids are registered by reference.
The version's tags `modeldiff.ref`, `modeldiff.identity` and `modeldiff.tokenizer_hash` (the vocabulary hash, or
for tokenizer-less toys a hash of their id range: `modeldiff.models.vocabulary_key`) let screening and run reuse work
without downloading anything.

Anyone who can register can write a version, so the screening service resolves versions under `screening_policy()`:
a by-reference ref must be one the config's `screening` section allows (checked before anything is opened), and only
safetensors weights load, without a repository's own code. A version whose ref leads back to itself is refused.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from modeldiff.models import MODEL_REFS, LoadedModel, RefScheme, cache_root, load_model, vocabulary_key
from modeldiff.models.refs import ALIASES, NOISE_REF, REGISTRY_PREFIX, looks_like_path, scheme_of

from . import tracking

REF_TAG, IDENTITY_TAG, TOKENIZER_TAG = "modeldiff.ref", "modeldiff.identity", "modeldiff.tokenizer_hash"
ARTIFACT = "model"
REF_FILE = "modeldiff_ref.json"
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")
URI_HELP = "models:/<name>/<version> (e.g. models:/my-model/1) or models:/<name>@<alias>"
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
REGISTER_COPIED = "register the model with its weights copied (modeldiff register REF --name NAME, without --no-copy)"
# the versions being resolved, outermost first (a ref may name another version)
_RESOLVING: ContextVar[tuple[str, ...]] = ContextVar("modeldiff_resolving", default=())
_SCREENING: ContextVar[bool] = ContextVar("modeldiff_screening", default=False)


def _ref_info(ref: str, loaded: LoadedModel, copied: bool) -> dict:
    sp = loaded.space
    return {
        "ref": ref,
        "identity": loaded.identity,
        "tokenizer_hash": vocabulary_key(loaded),
        "copied": copied,
        "space": {"length": sp.length, "n_tokens": sp.n_tokens, "bos_token_id": sp.bos_token_id},
    }


def _log_weights(loaded: LoadedModel) -> bool:
    """Logs the model's files under `model/`; False for hub ids (registered by reference)."""
    if loaded.path is not None:
        mlflow.log_artifacts(str(loaded.path), ARTIFACT)
        return True
    if loaded.identity.startswith("hub:"):
        return False
    with tempfile.TemporaryDirectory() as tmp:  # made in-process (e.g. a noise copy): save what was made
        loaded.model.save_pretrained(tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        mlflow.log_artifacts(tmp, ARTIFACT)
    return True


def register_model(ref: str, name: str, cfg, copy: bool = True):
    """Registers `ref` as a new version of the registered model `name` and returns the ModelVersion.

    copy=True makes the version self-contained (local weights logged with it); copy=False records only the
    ref, which then has to load the same model wherever the version is used.
    """
    if not re.fullmatch(r"[^/@\s]+", name):
        raise ValueError(
            f"registered model name {name!r} cannot be used in {URI_HELP}: choose a name without '/', '@' or spaces"
        )
    loaded = load_model(ref, cfg)
    with tracking.start_run(
        "register", cfg, {"model": ref, "registered_model": name}, run_name=f"register {name}"
    ) as run:
        mlflow.set_tags({tracking.MODEL: ref, tracking.identity_tag(tracking.MODEL): loaded.identity})
        copied = _log_weights(loaded) if copy else False
        mlflow.log_dict(_ref_info(ref, loaded, copied), f"{ARTIFACT}/{REF_FILE}")
        source = mlflow.get_artifact_uri(ARTIFACT)
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    # (mlflow.register_model("runs:/...") wants an MLflow-flavoured model since MLflow 3; a version of plain
    # artifacts is created directly)
    tags = {REF_TAG: ref, IDENTITY_TAG: loaded.identity, TOKENIZER_TAG: vocabulary_key(loaded)}
    version = client.create_model_version(name, source, run_id=run.info.run_id, tags=tags)
    return client.get_model_version(name, version.version)


def get_version(uri: str):
    """The ModelVersion of a `models:/` URI, or a ValueError naming the URI and what to do."""
    m = MODEL_URI.match(uri.strip())
    if not m:
        raise ValueError(f"cannot read the registry URI {uri!r}: write {URI_HELP}")
    if m["version"] is not None and not m["version"].isdigit():
        raise ValueError(f"registry URI {uri!r}: version {m['version']!r} is not a number; write {URI_HELP}")
    client = MlflowClient()
    try:
        if m["alias"] is not None:
            return client.get_model_version_by_alias(m["name"], m["alias"])
        return client.get_model_version(m["name"], m["version"])
    except MlflowException as e:
        if e.error_code not in MISSING:
            raise
        raise ValueError(
            f"registry URI {uri!r} names no model version in {mlflow.get_registry_uri()} "
            f"({str(e).splitlines()[0]}): check the name and version (MLflow UI, Models tab) and "
            "MLFLOW_TRACKING_URI, or register the model first: modeldiff register REF --name NAME"
        ) from None


def safe_name(name: str) -> str:
    """A registry name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _cached_identity(path: Path) -> str | None:
    try:
        return json.loads((path / REF_FILE).read_text()).get("identity")
    except (OSError, ValueError):
        return None


def _download(version, identity: str) -> Path:
    """The version's `model/` artifact under the cache, reused while its identity matches the version's
    (another tracking store may have a different model under the same name and version)."""
    out = cache_root() / "registry" / safe_name(version.name) / str(version.version)
    if _cached_identity(out) == identity:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp", dir=out.parent))
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{REGISTRY_PREFIX}{version.name}/{version.version}", dst_path=str(tmp)
        )
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except (MlflowException, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _cached_identity(out) == identity:  # another process finished first
            return out
        raise ValueError(
            f"cannot download {REGISTRY_PREFIX}{version.name}/{version.version} "
            f"({str(e).splitlines()[0]}): check that its run's artifacts are reachable from here, "
            "or register the model again"
        ) from None
    return out


def _ref_of(uri: str, version) -> tuple[str, bool]:
    """(the local download with the version's weights, or its original ref if registered by reference; whether
    the weights were copied)."""
    identity = version.tags.get(IDENTITY_TAG)
    if not identity:
        raise ValueError(
            f"{uri} (run {version.run_id}) was not registered by modeldiff (no {IDENTITY_TAG} tag): "
            "register it with modeldiff register REF --name NAME"
        )
    local = _download(version, identity)
    try:
        info = json.loads((local / REF_FILE).read_text())
        ref = info["ref"]
        if not isinstance(ref, str):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"{uri} has no readable model/{REF_FILE} (a JSON object with the model's ref): register the model again "
            "with modeldiff register REF --name NAME"
        ) from None
    if info.get("copied") is True and (local / "config.json").exists():
        return str(local), True
    return ref, False


def resolve_model_uri(uri: str) -> tuple[str, str]:
    """(a local directory with the version's weights, or the original ref if registered by reference;
    the version's identity)."""
    version = get_version(uri)
    return _ref_of(uri, version)[0], version.tags[IDENTITY_TAG]


@contextmanager
def screening_policy():
    """Registry versions loaded inside this block are untrusted input (see the module's docstring)."""
    token = _SCREENING.set(True)
    try:
        yield
    finally:
        _SCREENING.reset(token)


def _listed(values) -> str:
    return ", ".join(map(str, values)) if values else "none"


def check_by_reference(uri: str, ref: str, allowed) -> None:
    """Raises a ValueError unless screening may open `ref`, which the by-reference version `uri` names; `allowed` is
    the config's `screening` section. Opens nothing: a path is only resolved."""
    if ref.startswith(REGISTRY_PREFIX):
        return  # another version: checked in turn when it resolves
    noise = NOISE_REF.match(ref)
    if noise:
        return check_by_reference(uri, noise["base"], allowed)
    kind = scheme_of(ref)
    if kind in ("toy", *ALIASES):  # trained in-process, or shipped with the host
        return
    if kind in ("gguf", "directory") or (kind is None and looks_like_path(ref)):
        path = Path(ref).expanduser().resolve()
        if any(path.is_relative_to(Path(d).expanduser().resolve()) for d in allowed.directories):
            return
        raise ValueError(
            f"{uri} was registered by reference to the path {ref!r}, outside the directories screening may open "
            f"(screening.directories: {_listed(allowed.directories)}): {REGISTER_COPIED}, or have the screening "
            "service's operator add its directory to screening.directories"
        )
    if kind is None:
        if any(fnmatchcase(ref, pattern) for pattern in allowed.hub_ids):
            return
        raise ValueError(
            f"{uri} was registered by reference to the hub id {ref!r}, which screening may not load "
            f"(screening.hub_ids: {_listed(allowed.hub_ids)}): {REGISTER_COPIED}, or have the screening service's "
            "operator add it to screening.hub_ids"
        )
    raise ValueError(
        f"{uri} was registered by reference to {ref!r} ({kind} ref), which screening does not open: {REGISTER_COPIED}"
    )


def _screening_cfg(cfg):
    """The config a screened version loads with: safetensors only, no repository code."""
    cfg = copy.deepcopy(cfg)
    cfg.model.safetensors_only, cfg.model.trust_remote_code = True, False
    return cfg


def _refers_to_itself(chain: tuple[str, ...], key: str) -> ValueError:
    loop = chain[chain.index(key) :]
    through = f" through {' -> '.join(loop[1:])}" if len(loop) > 1 else ""
    return ValueError(
        f"{key} refers to itself{through} (it was registered by reference to a registry URI that leads back to it), "
        f"so it names no weights: {REGISTER_COPIED}"
    )


def _load_registered(ref: str, cfg) -> LoadedModel:
    """A registry version loads from its downloaded copy (identity: the version's tag, which a download's file
    times would otherwise change) or, registered by reference, from its original ref (which must still load
    the registered model)."""
    version = get_version(ref)
    key, chain = f"{REGISTRY_PREFIX}{version.name}/{version.version}", _RESOLVING.get()
    if key in chain:
        raise _refers_to_itself(chain, key)
    token = _RESOLVING.set((*chain, key))
    try:
        return _load_version(ref, version, cfg)
    finally:
        _RESOLVING.reset(token)


def _load_version(ref: str, version, cfg) -> LoadedModel:
    source, copied = _ref_of(ref, version)
    identity = version.tags[IDENTITY_TAG]
    if _SCREENING.get():
        if not copied:
            check_by_reference(ref, source, cfg.screening)
        cfg = _screening_cfg(cfg)
    try:
        loaded = load_model(source, cfg)
    except ValueError as e:
        if str(e).startswith(REGISTRY_PREFIX):  # names a version already (a nested one)
            raise
        raise ValueError(f"{ref}: {e}") from None
    if not copied and loaded.identity != identity:
        raise ValueError(
            f"{ref} was registered by reference to {source!r}, which now loads a different model "
            f"({loaded.identity} instead of {identity}): register the model again, with its weights "
            "copied (modeldiff register without --no-copy)"
        )
    return replace(loaded, identity=identity, ref=ref)


# `models:/...` refs load through this module: plugged into the model-ref schemes from here, so the models package
# never imports MLflow
MODEL_REFS.register(
    REGISTRY_PREFIX,
    RefScheme(lambda ref: ref.startswith(REGISTRY_PREFIX), _load_registered, "a registry URI models:/<name>/<version>"),
)
