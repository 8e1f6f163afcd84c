"""Push an output directory to the Hugging Face Hub (or any Hub at ``HF_ENDPOINT``).

All HTTP goes through ``huggingface_hub``: ``create_repo`` (created when missing),
``create_branch`` for a non-default revision, and one ``upload_folder`` commit. The
local directory is only read, never changed, so a failed push loses nothing and the
same command retried finishes the job: files already on the Hub (same sha) are skipped,
and a push with no changed file makes no commit.

The token comes from ``HF_TOKEN`` or the user's login (``hf auth login``); it is never
printed, and it is scrubbed from any error text that might echo it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import LLMCompressError

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
# Stale weights left from an earlier push would shadow the new ones (transformers picks
# model.safetensors before an index), so these are mirrored: removed when not local.
MIRRORED = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.gguf"]
REQUIRED = ("config.json",)


class HubError(LLMCompressError):
    """The Hub refused or dropped a request."""


@dataclass
class PushResult:
    repo_id: str
    revision: str
    url: str
    commit: str
    changed: bool  # False: every file was already there, no commit was made

    def summary(self) -> str:
        if not self.changed:
            return f"{self.url} is up to date (revision {self.revision}, commit {self.commit[:10]}): no new commit"
        return f"pushed to {self.url} (revision {self.revision}, commit {self.commit[:10]})"


def endpoint() -> str:
    """The Hub base URL: ``HF_ENDPOINT`` when set (mirrors, self-hosted hubs)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError("No Hugging Face token: set HF_TOKEN to a token with write access, "
                       "or log in once with `hf auth login`.")
    return token


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"Invalid repo id {repo_id!r}: {exc}") from None
    if repo_id.count("/") != 1:
        raise HubError(f"Invalid repo id {repo_id!r}: write it as ORG_OR_USER/NAME, e.g. my-org/SmolLM2-135M-int4.")
    return repo_id


def check_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"Nothing to push: {folder} is not a directory. Run a recipe first "
                       "(llmcompress run RECIPE --output DIR) and push DIR.")
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
    if missing or not weights:
        what = ", ".join(missing + ([] if weights else ["*.safetensors weights"]))
        raise HubError(f"{folder} is not a model directory ({what} missing): push the directory "
                       "that `llmcompress run` wrote.")
    return folder


@contextlib.contextmanager
def _transport(ep: str):
    """Use the git-LFS protocol on hubs other than huggingface.co.

    With ``hf_xet`` installed, huggingface_hub sends LFS files through Xet storage, which
    self-hosted hubs and mirrors rarely speak; the LFS protocol is the portable one.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_DISABLE_XET
    if ep != DEFAULT_ENDPOINT:
        constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = before


def _explain(exc: Exception, repo_id: str, ep: str, token: str, folder: Path | None) -> HubError:
    """Turn a huggingface_hub / network exception into one clear sentence, token scrubbed."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(exc, "response", None), "status_code", None)
    namespace = repo_id.split("/")[0]
    kept = f" The local folder {folder} is unchanged." if folder else ""
    if isinstance(exc, OfflineModeIsEnabled):
        msg = "HF_HUB_OFFLINE is set, and pushing needs the network: unset it for this command."
    elif isinstance(exc, HfHubHTTPError) and status == 401:
        msg = (f"The Hub at {ep} refused the token (401 Unauthorized). Set HF_TOKEN to a valid token "
               f"with write access to {namespace!r} (or run `hf auth login`).")
    elif isinstance(exc, HfHubHTTPError) and status == 403:
        msg = (f"The token has no write access to {repo_id} at {ep} (403 Forbidden): use a write token "
               f"of a member of {namespace!r}.")
    elif isinstance(exc, HfHubHTTPError) and status == 404:
        msg = (f"{ep} answered 404 for {repo_id}: the user or organisation {namespace!r} does not exist "
               f"or the token's user is not a member of it. Check the repo id.")
    elif isinstance(exc, HfHubHTTPError):
        msg = f"The Hub at {ep} failed on {repo_id} (HTTP {status}): {exc.server_message or _first_line(exc)}."
    else:
        msg = (f"The connection to {ep} failed while pushing {repo_id} ({type(exc).__name__}: "
               f"{_first_line(exc)}). Run the same command again: files already uploaded are not sent twice.")
    return HubError((msg + kept).replace(token, "***"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _network_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub raises: its HTTP errors, and its HTTP client's transport errors."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[Exception]] = [HfHubHTTPError, OSError]
    for mod in ("httpx2", "httpx"):  # the client huggingface_hub uses, depending on its version
        with contextlib.suppress(ImportError):
            errors.append(__import__(mod).HTTPError)
    return tuple(errors)


def preflight(repo_id: str, token: str | None = None) -> None:
    """Everything checkable before hours of compression: repo id, token, namespace.

    Asks the Hub who the token belongs to, so a wrong token or an organisation the user
    is not in fails now rather than after the model was compressed.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    token = _token(token)
    ep = endpoint()
    try:
        who = HfApi(endpoint=ep, token=token).whoami()
    except _network_errors() as exc:
        raise _explain(exc, repo_id, ep, token, None) from None
    namespace = repo_id.split("/")[0]
    names = {who.get("name")} | {o.get("name") for o in who.get("orgs", [])}
    if namespace not in names:
        raise HubError(f"Cannot push to {repo_id} at {ep}: {namespace!r} is neither the token's user "
                       f"({who.get('name')!r}) nor one of its organisations ({', '.join(sorted(n for n in names if n and n != who.get('name'))) or 'none'}).")


def push(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, token: str | None = None) -> PushResult:
    """Upload ``folder`` to ``repo_id`` in one commit, creating the repo (and branch) if missing.

    Args:
        folder: an output directory written by ``llmcompress run`` (config, weights, README.md).
        repo_id: ``ORG_OR_USER/NAME``.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to push to (created from main when missing); default ``main``.
        commit_message: default "Upload <name> with llmcompress".
        token: default ``HF_TOKEN`` or the stored login.
    """
    from huggingface_hub import CommitOperationDelete, HfApi

    folder = check_folder(folder)
    check_repo_id(repo_id)
    token = _token(token)
    ep = endpoint()
    revision = revision or "main"
    api = HfApi(endpoint=ep, token=token)
    message = commit_message or f"Upload {folder.name} with llmcompress"
    try:
        with _transport(ep):
            url = str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
            if revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            before = api.repo_info(repo_id, revision=revision).sha
            additions = _additions(folder, repo_id)
            local = {op.path_in_repo for op in additions}
            stale = [CommitOperationDelete(p) for p in api.list_repo_files(repo_id, revision=revision)
                     if p not in local and any(fnmatch.fnmatch(p, pat) for pat in MIRRORED)]
            logger.info("uploading %d files from %s to %s at %s", len(additions), folder, repo_id, ep)
            info = api.create_commit(repo_id, operations=stale + additions, commit_message=message,
                                     revision=revision)
    except _network_errors() as exc:
        raise _explain(exc, repo_id, ep, token, folder) from None
    return PushResult(repo_id=repo_id, revision=revision, url=url.rstrip("/"), commit=info.oid,
                      changed=info.oid != before)


def _additions(folder: Path, repo_id: str) -> list:
    """One upload operation per file; the model card names the repo in its loading snippet."""
    from huggingface_hub import CommitOperationAdd

    from .card import REPO_PLACEHOLDER

    ops = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or rel.endswith(".tmp"):
            continue
        if rel == "README.md":
            card = path.read_text().replace(REPO_PLACEHOLDER, repo_id)
            ops.append(CommitOperationAdd(rel, card.encode()))
        else:
            ops.append(CommitOperationAdd(rel, str(path)))
    return ops
