"""Hugging Face hub ids, and a fast answer when the hub cannot be reached.

``is_hub_id``: what huggingface_hub (and so transformers) accepts as a repo id - ``name`` or
``org/name`` of letters, digits, ``-``, ``_`` and ``.``, at most 96 characters, without ``--``
or ``..``, not ending in ``.git``, not starting or ending with ``-`` or ``.``. A spec that is
no bundled name and no local path is loaded from the hub when it is such an id (``gpt2`` as
well as ``openai-community/gpt2``).

``hub_access(repo)``, called before transformers (or torch) is imported: with
``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, nothing is probed and the local hub cache
is used (a repo not in it is refused at once, see ``cached``). Otherwise one
TCP connection to the endpoint (``HF_ENDPOINT``, or the proxy when one is set) is tried
with a ``PROBE_SECONDS`` timeout. When it fails, a repo already in the local hub cache loads
from there (``local_files_only``); any other is one ``RepdispError`` saying the hub is
unreachable and naming ``HF_HUB_OFFLINE=1`` and the local-folder alternative - in seconds,
where transformers' own retries take close to a minute.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .errors import RepdispError
from .registry import BUNDLED

PROBE_SECONDS = 4.0
_REPO_RE = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$")
_TRUE = {"1", "on", "yes", "true"}


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` is a valid hub repo id (``name`` or ``org/name``; see the module)."""
    return (
        isinstance(spec, str)
        and 0 < len(spec) <= 96
        and bool(_REPO_RE.match(spec))
        and "--" not in spec
        and ".." not in spec
        and not spec.endswith(".git")
    )


def offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def endpoint() -> tuple[str, int]:
    """(host, port) a hub request connects to first: the proxy for the endpoint's scheme when
    one is set and ``no_proxy`` does not exempt the host (``urllib.request.getproxies``), else
    the endpoint (``HF_ENDPOINT``, default huggingface.co)."""
    hub = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxies = urllib.request.getproxies()
    proxy = proxies.get(hub.scheme) or proxies.get("all")
    if proxy and urllib.request.proxy_bypass(hub.hostname or ""):
        proxy = None
    target = urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else hub
    default = 443 if target.scheme == "https" else 80
    return target.hostname or "huggingface.co", target.port or default


def cached(repo: str, revision: str | None = None) -> bool:
    """Whether ``repo``'s config.json is in the local hub cache, read the way huggingface_hub
    lays it out: ``HF_HUB_CACHE`` (default ``HF_HOME/hub``) / ``models--ORG--NAME`` /
    ``snapshots/COMMIT/``, the commit named by ``refs/REVISION`` (default ``main``) or given."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    folder = (
        Path(os.environ.get("HF_HUB_CACHE") or home / "hub") / f"models--{repo.replace('/', '--')}"
    )
    ref = folder / "refs" / (revision or "main")
    try:
        commit = ref.read_text().strip() if ref.is_file() else (revision or "")
        return bool(commit) and (folder / "snapshots" / commit / "config.json").is_file()
    except OSError:
        return False


def hub_access(repo: str, revision: str | None = None) -> dict[str, bool]:
    """Extra ``from_pretrained`` options for ``repo`` (``{}``, or ``local_files_only`` when the
    hub is down but the repo is cached); a one-line error when it is down and not cached."""
    if offline():
        if cached(repo, revision):
            return {}
        raise RepdispError(
            f"{repo!r} is not in the local hub cache and HF_HUB_OFFLINE is set: unset it to "
            "download the model, or pass a local model folder or .gguf file"
        )
    host, port = endpoint()
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
        return {}
    except OSError as e:
        reason = e.strerror or type(e).__name__
    if cached(repo, revision):
        return {"local_files_only": True}
    raise RepdispError(
        f"the Hugging Face hub is unreachable ({host}:{port}: {reason}), so {repo!r} cannot be "
        "downloaded; set HF_HUB_OFFLINE=1 to use models already in the local hub cache, or pass "
        f"a local model folder or .gguf file (bundled: {', '.join(BUNDLED)})"
    )


def dataset_access(name: str) -> None:
    """Before ``datasets.load_dataset(name)``: a one-line error within ``PROBE_SECONDS`` when
    the hub cannot be reached (``datasets`` itself retries for about half a minute). With
    ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set, nothing is probed: ``datasets`` reads its
    local cache."""
    if offline() or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true"):
        return
    host, port = endpoint()
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
        return
    except OSError as e:
        reason = e.strerror or type(e).__name__
    raise RepdispError(
        f"the Hugging Face hub is unreachable ({host}:{port}: {reason}), so dataset {name!r} "
        "cannot be downloaded; set HF_DATASETS_OFFLINE=1 to use datasets already in the local "
        "cache, or pass a local file or folder (.txt .jsonl .csv .parquet)"
    )
