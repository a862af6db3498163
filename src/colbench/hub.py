"""Remote resources: the Hugging Face hub (models, datasets) and the BEIR download server.

The one home for "are we offline?", where hub models and BEIR datasets come from and are cached, and what
a user is told when one cannot be had. Without the network the hub libraries retry for tens of seconds per
file; everything here asks once, briefly, then fails with an `InputError` that says how to provide the
resource (a cache copied from a machine with internet, or a local folder named in params.yaml).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import ssl
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import certifi

from colbench.errors import InputError

HUB_URL = "https://huggingface.co"
NANOBEIR = "sentence-transformers/NanoBEIR-en"  # the held-out set of the study's recipe (dataset id)
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# A model download takes the PyTorch weights only: model repos often also hold ONNX / OpenVINO / TF / Flax copies
# (and *.bin beside *.safetensors). huggingface_hub checks a cached snapshot against the repository's whole file
# listing, so the cache is asked with the same files left out, *.bin included, or a model this code downloaded
# would count as missing offline.
SKIPPED_MODEL_FILES = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "coreml/*"]
DOWNLOAD_TIMEOUT = 60  # seconds a BEIR download may wait for the server (connecting, or between two reads)


def offline() -> bool:
    """True when the hub must not be contacted: ``HF_HUB_OFFLINE`` set to a true value (1/true/yes/on, any
    case), or huggingface_hub already in offline mode."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def reachable(url: str, timeout: float = 3.0) -> bool:
    """A TCP connection to ``url``'s host on port 443 opens within ``timeout`` seconds (no request is sent)."""
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_url() -> str:
    """The hub endpoint in use (``HF_ENDPOINT`` or huggingface.co)."""
    return os.environ.get("HF_ENDPOINT") or HUB_URL


def hub_out_of_reach() -> bool:
    """True when the hub must not or cannot be contacted: `offline`, or its endpoint does not answer (asked once,
    briefly: the libraries would retry for tens of seconds per file)."""
    return offline() or not reachable(hub_url())


@contextlib.contextmanager
def offline_mode(force: bool) -> Iterator[None]:
    """Switch the hub libraries to offline mode for the block (they read HF_HUB_OFFLINE at import only)."""
    if not force:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def model_snapshot(hub_id: str, what: str, revision: str | None = None) -> str:
    """A local folder holding hub model `hub_id` at ``revision`` (a commit, branch or tag; None: the default branch)
    from the HF cache (a branch or tag as the cache last resolved it), or downloaded when online. The folder is
    ``<cache>/snapshots/<commit>``.

    ``what`` is the params key that names it. Raises InputError (never hangs) when the id is neither
    cached nor downloadable.
    """
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    at = f" at revision {revision}" if revision else ""
    how = (
        f"download it on a machine with internet access (`hf download {hub_id}"
        f"{' --revision ' + revision if revision else ''}`) into the Hugging Face cache (HF_HOME) used here, or set "
        f"the {what} param to a local folder"
    )
    try:
        return snapshot_download(hub_id, revision=revision, local_files_only=True,
                                 ignore_patterns=[*SKIPPED_MODEL_FILES, "*.bin"])
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if offline():
        raise InputError(f"{what} {hub_id!r}{at}: not a local folder and not in the Hugging Face cache while offline; "
                         f"{how}")
    try:
        # A bounded metadata call first: without network it fails in seconds instead of retrying.
        info = model_info(hub_id, revision=revision, timeout=15)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot fetch it now"
        raise InputError(
            f"{what} {hub_id!r}{at}: not a local folder, not cached, and the hub cannot serve it "
            f"({type(exc).__name__}: {exc}); {how}"
        ) from exc
    ignore = list(SKIPPED_MODEL_FILES)
    if any(s.rfilename.endswith(".safetensors") for s in info.siblings or []):
        ignore.append("*.bin")
    return snapshot_download(hub_id, revision=revision, ignore_patterns=ignore)


def refuse_revision_for_folder(revision: str | None, what: str, name: str) -> None:
    """InputError when ``train.model_revision`` is set but the model it would pin (``what`` = ``name``) is a folder."""
    if revision:
        raise InputError(f"train.model_revision {revision!r} pins a hub model's commit, but {what} {name!r} is a local "
                         "folder: set train.model_revision to null (a folder has no revision)")


def cached_snapshot(repo_id: str, repo_type: str = "model", revision: str | None = None) -> Path | None:
    """The folder of ``repo_id`` (at ``revision``) in the Hugging Face hub cache, or None; never contacts the hub.

    What `hf download` fills. Offline, datasets 5 loads a hub dataset *id* only from its own Arrow cache (a dataset
    this machine loaded before, online), never from this folder; given the folder itself, it reads it like any
    local dataset folder, the configs named by its card. Its name is the commit.
    """
    from huggingface_hub import snapshot_download

    skipped = [*SKIPPED_MODEL_FILES, "*.bin"] if repo_type == "model" else None  # as model_snapshot asks
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True,
                                      ignore_patterns=skipped))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        return None


def beir_cache_dir() -> Path:
    """Where downloaded BEIR datasets are kept: $COLBENCH_BEIR_CACHE or ~/.cache/colbench/beir."""
    return Path(os.environ.get("COLBENCH_BEIR_CACHE") or Path.home() / ".cache" / "colbench" / "beir")


def beir_cached(name: str) -> bool:
    """Whether BEIR dataset ``name`` is already unpacked in :func:`beir_cache_dir`."""
    return (beir_cache_dir() / name / "corpus.jsonl").is_file()


def download_beir(name: str) -> tuple[Path, str]:
    """The unpacked folder of BEIR dataset ``name`` (downloaded once into the cache) and its URL."""
    url = BEIR_URL.format(name=name)
    cache = beir_cache_dir()
    target = cache / name
    if beir_cached(name):
        return target, url
    cache.mkdir(parents=True, exist_ok=True)
    # Download and unpack in a temporary folder, moved into place only when complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache))
    try:
        archive = tmp / f"{name}.zip"
        _download(url, archive)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)  # zipfile drops absolute paths and ".." from member names
        unzipped = tmp / name
        if not (unzipped / "corpus.jsonl").is_file():
            raise InputError(f"{url}: the archive has no {name}/corpus.jsonl; is {name!r} a BEIR dataset?")
        if target.exists():
            shutil.rmtree(target)
        os.replace(unzipped, target)
    except (OSError, http.client.HTTPException, zipfile.BadZipFile) as err:  # HTTPException: a truncated response
        raise InputError(
            f"cannot download BEIR dataset {name!r} from {url} ({type(err).__name__}: {err}). Download and unzip it "
            f"on a machine with internet into {target} (or $COLBENCH_BEIR_CACHE/{name}), or set "
            f"prepare.datasets.<name>.source to a local BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, url


def _download(url: str, path: Path) -> None:
    """``url`` into ``path``, giving up after DOWNLOAD_TIMEOUT seconds without a byte.

    By hand rather than beir's ``download_url``: it calls requests without a timeout (requests then overrides the
    socket default), so a server that accepts the connection and stops answering would hang the stage forever.
    """
    print(f"downloading {url}", flush=True)
    # certifi's certificates, as requests uses: some Pythons (python.org's macOS builds) ship with none of their own.
    context = ssl.create_default_context(cafile=certifi.where())
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT, context=context) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
