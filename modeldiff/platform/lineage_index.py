"""The lineage index in the registry: each screened version's fingerprint (modeldiff.analysis.lineage) is an artifact
of a screening run, and the version's tag `modeldiff.lineage.fingerprint` references it as
`sha256:<hex> runs:/<run id>/<path>`. A new version's screening reads every earlier fingerprint of its vocabulary
(cached locally by content hash, so each is downloaded once per host), ranks them, and checks in full only the
shortlist. A registered version without a fingerprint (screened before the index existed) gets one made and stored
by the first screening that meets it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from modeldiff.analysis import lineage
from modeldiff.models import LoadedModel
from modeldiff.models.loaded import cache_root, vocabulary_key

FINGERPRINT_TAG = "modeldiff.lineage.fingerprint"  # sha256:<hex> runs:/<run id>/<artifact path>
REFERENCE = re.compile(r"sha256:([0-9a-f]{64}) (runs:/[0-9a-zA-Z]+/[\w./-]+\.npz)")
log = logging.getLogger("modeldiff.screening")


def compute(cfg, loaded: LoadedModel) -> lineage.Fingerprint:
    """A loaded model's fingerprint with the config's probe count."""
    probes, batch_size = int(cfg.screening.probes), int(cfg.model.batch_size)
    return lineage.fingerprint(loaded.model, loaded.space, vocabulary_key(loaded), probes, batch_size=batch_size)


def _cache(digest: str) -> Path:
    return cache_root() / "lineage" / f"{digest}.npz"


def store(fp: lineage.Fingerprint, artifact_path: str, name: str, version: str) -> str:
    """Log the fingerprint as `artifact_path` (a .npz) of the active run and tag the version with its reference."""
    data = fp.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_path).name
        local.write_bytes(data)
        mlflow.log_artifact(str(local), str(Path(artifact_path).parent))
    _write_cache(digest, data)
    value = f"sha256:{digest} runs:/{mlflow.active_run().info.run_id}/{artifact_path}"
    MlflowClient().set_model_version_tag(name, version, FINGERPRINT_TAG, value)
    return value


def _write_cache(digest: str, data: bytes):
    path = _cache(digest)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache costs a download next time, nothing else
        log.warning("cannot cache a lineage fingerprint under %s: %s", path.parent, e)


def load(value: str) -> lineage.Fingerprint | None:
    """The fingerprint a version's tag references; None (with the reason logged) when it is missing, unreadable or
    of an older format: the caller then treats the version as one without a fingerprint."""
    m = REFERENCE.fullmatch(value.strip())
    if not m:
        log.warning("malformed %s tag %r: ignored", FINGERPRINT_TAG, value[:120])
        return None
    digest, uri = m.groups()
    try:
        data = _cache(digest).read_bytes()
    except OSError:
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != digest:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)).read_bytes()
        except (MlflowException, OSError) as e:
            log.warning("cannot download the lineage fingerprint %s (%s): ignored", uri, str(e).splitlines()[0])
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            log.warning("the lineage fingerprint %s does not match its tag's hash: ignored", uri)
            return None
        _write_cache(digest, data)
    try:
        return lineage.Fingerprint.from_bytes(data)
    except ValueError as e:
        log.warning("%s: %s", uri, e)
        return None
