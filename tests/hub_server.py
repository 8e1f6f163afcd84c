"""A loopback Hugging Face Hub for tests: the part of the Hub HTTP API that huggingface_hub
uses to create repos, upload folders (regular and LFS files) and download files.

Everything lives in memory. Two servers run: the API on 127.0.0.1 and an LFS "CDN" on
127.0.0.2 (huggingface_hub follows redirects to the same host even on another port, and
the real Hub serves LFS content from another host, so the CDN needs another address).

Failure injection: ``hub.drop_commits = n`` makes the next n commit requests read part
of the body and close the connection without answering (a connection lost mid-upload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

USER = "tester"
ORGS = ("llmco",)
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".png", ".gguf")  # like the Hub's default .gitattributes


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    size: int
    blob: str                   # git sha1 of the content (regular) or of the LFS pointer
    content: bytes | None       # regular files
    sha256: str | None = None   # LFS files

    def json(self, path: str) -> dict:
        d = {"type": "file", "path": path, "size": self.size, "oid": self.blob}
        if self.sha256:
            d["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return d


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, list[Commit]] = field(default_factory=dict)

    def head(self, rev: str) -> Commit | None:
        if rev in self.branches:
            return self.branches[rev][-1]
        for commits in self.branches.values():
            for c in commits:
                if c.oid == rev:
                    return c
        return None


GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


class Hub:
    """State of the loopback Hub, plus the two servers."""

    def __init__(self, token: str = "hf_test_write_token"):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []   # (method, path) for assertions
        self.drop_commits = 0
        self.lock = threading.Lock()
        self.api = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "api"))
        self.cdn = ThreadingHTTPServer(("127.0.0.2", 0), _handler(self, "cdn"))
        self.endpoint = f"http://127.0.0.1:{self.api.server_port}"
        self.cdn_url = f"http://127.0.0.2:{self.cdn.server_port}"
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.api, self.cdn)]

    def start(self) -> "Hub":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self.api, self.cdn):
            s.shutdown()
            s.server_close()

    def commits(self, repo_id: str, branch: str = "main") -> list[Commit]:
        return self.repos[repo_id].branches[branch]

    def new_commit(self, repo: Repo, branch: str, message: str, files: dict[str, Entry]) -> Commit:
        parent = repo.branches[branch][-1].oid if repo.branches.get(branch) else ""
        oid = hashlib.sha1(f"{parent}{message}{time.time_ns()}{sorted(files)}".encode()).hexdigest()
        commit = Commit(oid, message, files)
        repo.branches.setdefault(branch, []).append(commit)
        return commit


def _handler(hub: Hub, role: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        # ------------------------------------------------------------ plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None):
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, status: int, message: str, code: str | None = None):
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else
                       {"X-Error-Message": message})

        def _body(self) -> bytes:
            if not hasattr(self, "_cached_body"):
                n = int(self.headers.get("Content-Length") or 0)
                self._cached_body = self.rfile.read(n) if n else b""
            return self._cached_body

        def _auth(self) -> str | None:
            """'ok', 'anonymous', or None after answering 401 for a wrong token."""
            header = self.headers.get("Authorization", "")
            if not header:
                return "anonymous"
            if header == f"Bearer {hub.token}":
                return "ok"
            self._body()  # drain it, or the next request on this connection would start inside it
            self._error(401, "Invalid credentials in Authorization header", "Unauthorized")
            return None

        def _repo(self, repo_id: str, auth: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and auth != "ok"):
                self._error(404 if auth == "ok" else 401, f"Repository not found: {repo_id}", "RepoNotFound")
                return None
            return repo

        def _commit_at(self, repo: Repo, rev: str) -> Commit | None:
            commit = repo.head(unquote(rev))
            if commit is None:
                self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return commit

        def _route(self):
            self.__dict__.pop("_cached_body", None)  # one handler serves every request of a connection
            hub.requests.append((self.command, self.path))
            url = urlparse(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            if role == "cdn":
                return self._cdn(path)
            auth = self._auth()
            if auth is None:
                return
            for pattern, name in ROUTES:
                m = re.fullmatch(pattern, path)
                if m and name.split(":")[0] == self.command:
                    return getattr(self, "h_" + name.split(":")[1])(auth, query, *m.groups())
            self._body()
            self._error(404, f"no route for {self.command} {path}")

        do_GET = do_POST = do_PUT = do_HEAD = _route

        # ------------------------------------------------------------ API
        def h_whoami(self, auth, query):
            if auth != "ok":
                return self._error(401, "Invalid user token", "Unauthorized")
            self._json(200, {"type": "user", "name": USER, "orgs": [{"name": o, "type": "org"} for o in ORGS],
                             "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

        def h_create(self, auth, query):
            payload = json.loads(self._body() or b"{}")
            if auth != "ok":
                return self._error(401, "You must be authenticated to create a repo", "Unauthorized")
            namespace = payload.get("organization") or USER
            if namespace != USER and namespace not in ORGS:
                return self._error(404, f"Organization not found: {namespace}")
            repo_id = f"{namespace}/{payload['name']}"
            url = f"{hub.endpoint}/{repo_id}"
            with hub.lock:
                if repo_id in hub.repos:
                    return self._json(409, {"error": "You already created this model repo", "url": url})
                repo = Repo(repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
                gitattributes = Entry(len(GITATTRIBUTES), git_blob_sha1(GITATTRIBUTES), GITATTRIBUTES)
                hub.repos[repo_id] = repo
                hub.new_commit(repo, "main", "initial commit", {".gitattributes": gitattributes})
            self._json(200, {"url": url, "name": repo_id, "id": repo_id})

        def h_branch(self, auth, query, repo_id, branch):
            self._body()
            repo = self._repo(repo_id, auth)
            if repo is None:
                return
            if branch in repo.branches:
                return self._error(409, f"Reference already exists: {branch}")
            base = repo.head("main")
            repo.branches[branch] = [Commit(base.oid, base.message, dict(base.files))]
            self._json(200, {})

        def h_validate_yaml(self, auth, query):
            self._body()
            self._json(200, {"errors": [], "warnings": []})

        def h_preupload(self, auth, query, repo_id, rev):
            payload = json.loads(self._body())
            repo = self._repo(repo_id, auth)
            if repo is None:
                return
            head = repo.head(unquote(rev)) or repo.head("main")
            files = []
            for f in payload["files"]:
                lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10 * 2**20
                existing = head.files.get(f["path"])
                oid = None if existing is None else (existing.sha256 if existing.sha256 else existing.blob)
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                              "shouldIgnore": False, "oid": oid})
            self._json(200, {"files": files, "commitOid": head.oid})

        def h_lfs_batch(self, auth, query, repo_id):
            payload = json.loads(self._body())
            if self._repo(repo_id, auth) is None:
                return
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:  # no actions: already stored, nothing to upload
                    entry["actions"] = {
                        "upload": {"href": f"{hub.endpoint}/lfs-upload/{obj['oid']}"},
                        "verify": {"href": f"{hub.endpoint}/lfs-verify/{obj['oid']}"},
                    }
                objects.append(entry)
            self._json(200, {"transfer": "basic", "objects": objects})

        def h_lfs_upload(self, auth, query, oid):
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                return self._error(400, "sha256 mismatch")
            hub.lfs[oid] = data
            self._json(200, {})

        def h_lfs_verify(self, auth, query, oid):
            self._body()
            if oid not in hub.lfs:
                return self._error(404, f"LFS object {oid} was not uploaded")
            self._json(200, {"success": True})

        def h_commit(self, auth, query, repo_id, rev):
            if hub.drop_commits > 0:
                hub.drop_commits -= 1
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n // 2)
                self.close_connection = True
                self.connection.shutdown(2)  # drop it: no status line, no body
                return
            body = self._body()
            repo = self._repo(repo_id, auth)
            if repo is None:
                return
            if auth != "ok":
                return self._error(401, "You must be authenticated to commit", "Unauthorized")
            branch = unquote(rev)
            if branch not in repo.branches:
                return self._error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            files = dict(repo.head(branch).files)
            message = ""
            for line in body.splitlines():
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value["summary"]
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    files[value["path"]] = Entry(len(data), git_blob_sha1(data), data)
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._error(422, f"LFS object {value['oid']} is missing")
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\nsize {value['size']}\n"
                    files[value["path"]] = Entry(value["size"], git_blob_sha1(pointer.encode()), None, value["oid"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            with hub.lock:
                commit = hub.new_commit(repo, branch, message, files)
            self._json(200, {"success": True, "commitOid": commit.oid,
                             "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit.oid}"})

        def h_info(self, auth, query, repo_id, rev=None):
            repo = self._repo(repo_id, auth)
            if repo is None:
                return
            commit = self._commit_at(repo, rev or "main")
            if commit is None:
                return
            self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(commit.files)], "tags": []})

        def h_tree(self, auth, query, repo_id, rev, sub=None):
            repo = self._repo(repo_id, auth)
            if repo is None:
                return
            commit = self._commit_at(repo, rev)
            if commit is None:
                return
            sub = (sub or "").strip("/")
            prefix = sub + "/" if sub else ""
            self._json(200, [e.json(p) for p, e in sorted(commit.files.items()) if p.startswith(prefix)])

        def h_paths_info(self, auth, query, repo_id, rev):
            form = parse_qs(self._body().decode())
            repo = self._repo(repo_id, auth)
            if repo is None:
                return
            commit = self._commit_at(repo, rev)
            if commit is None:
                return
            paths = form.get("paths", [])
            self._json(200, [commit.files[p].json(p) for p in paths if p in commit.files])

        def h_resolve(self, auth, query, repo_id, rev, path):
            repo = self._repo(repo_id, auth)
            if repo is None:
                return
            commit = self._commit_at(repo, rev)
            if commit is None:
                return
            entry = commit.files.get(path)
            if entry is None:
                return self._error(404, f"Entry not found: {path}", "EntryNotFound")
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.blob}"'}
            if entry.sha256:
                headers.update({"Location": f"{hub.cdn_url}/lfs/{entry.sha256}", "X-Linked-Etag": f'"{entry.sha256}"',
                                "X-Linked-Size": str(entry.size)})
                return self._send(302, b"", headers)
            self._send(200, entry.content, headers, ctype="application/octet-stream")

        # ------------------------------------------------------------ CDN
        def _cdn(self, path):
            m = re.fullmatch(r"/lfs/([0-9a-f]{64})", path)
            if not m or m.group(1) not in hub.lfs:
                return self._error(404, "no such object")
            data = hub.lfs[m.group(1)]
            self._send(200, data, {"ETag": f'"{m.group(1)}"'}, ctype="application/octet-stream")

    return Handler


REPO = r"([^/]+/[^/]+)"
ROUTES = [
    (r"/api/whoami-v2", "GET:whoami"),
    (r"/api/repos/create", "POST:create"),
    (r"/api/validate-yaml", "POST:validate_yaml"),
    (rf"/api/models/{REPO}/branch/(.+)", "POST:branch"),
    (rf"/api/models/{REPO}/preupload/(.+)", "POST:preupload"),
    (rf"/api/models/{REPO}/commit/(.+)", "POST:commit"),
    (rf"/api/models/{REPO}/paths-info/([^/]+)", "POST:paths_info"),
    (rf"/api/models/{REPO}/tree/([^/]+)(/.*)?", "GET:tree"),
    (rf"/api/models/{REPO}/revision/(.+)", "GET:info"),
    (rf"/api/models/{REPO}", "GET:info"),
    (rf"/{REPO}\.git/info/lfs/objects/batch", "POST:lfs_batch"),
    (r"/lfs-upload/([0-9a-f]{64})", "PUT:lfs_upload"),
    (r"/lfs-verify/([0-9a-f]{64})", "POST:lfs_verify"),
    (rf"/{REPO}/resolve/([^/]+)/(.+)", "GET:resolve"),
    (rf"/{REPO}/resolve/([^/]+)/(.+)", "HEAD:resolve"),
]
