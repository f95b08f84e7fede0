"""A small Hub-compatible server on loopback for the Hub tests: the endpoints the `huggingface_hub` client (2.x)
calls to create repos, commit files and download them. Repos live in memory as a list of commits.

No package serves these calls without a network (hf-local-hub needs a Go binary it does not ship), so the tests
use this. Endpoints: whoami-v2, repos/create, repo info (+ /revision/REV), tree, paths-info, preupload (every
file "regular", sent inline in the commit), commit (NDJSON), branch, validate-yaml, and resolve (HEAD/GET)
with the headers the client reads (X-Repo-Commit, ETag, Content-Length) and X-Error-Code on 404s.
`python tests/support/hub_server.py` serves on a free port and prints its address.
"""

import base64
import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
PREFIXES = {"datasets": "dataset", "spaces": "space", "models": "model"}


def git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class Repo:
    def __init__(self, repo_id: str, repo_type: str):
        self.repo_id, self.repo_type = repo_id, repo_type
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}
        self.commit("main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, [])

    def commit(self, branch: str, added: dict[str, bytes], deleted: list[str]) -> str:
        files = dict(self.commits.get(self.refs.get(branch, ""), {}))
        files.update(added)
        for path in deleted:
            files = {p: c for p, c in files.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
        sha = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        self.commits[sha] = files
        self.refs[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None


class HubState:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()
        self.authorizations: list[str] = []  # Authorization headers received (to check the token was sent)
        self.requests: list[str] = []


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # -- plumbing
    def _send(self, status: int, body=b"", headers=None, head=False):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head=False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers, head=head)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self):
        self.state.requests.append(f"{self.command} {self.path}")
        if self.headers.get("Authorization"):
            self.state.authorizations.append(self.headers["Authorization"])

    @staticmethod
    def _split_repo(parts: list[str]) -> tuple[str, str, list[str]]:
        """['datasets', 'o', 'r', ...] -> ('dataset', 'o/r', [...])."""
        repo_type = "model"
        if parts and parts[0] in PREFIXES:
            repo_type = PREFIXES[parts.pop(0)]
        return repo_type, "/".join(parts[:2]), parts[2:]

    def _repo(self, repo_type, repo_id, head=False) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head=head)
        return repo

    def _revision(self, repo: Repo, revision: str, head=False) -> str | None:
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}", head=head)
        return sha

    # -- verbs
    def do_HEAD(self):
        self._get(head=True)

    def do_GET(self):
        self._get(head=False)

    def _get(self, head):
        self._record()
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "whoami-v2"]:
            return self._send(200, {"name": USER, "type": "user", "orgs": []}, head=head)
        if parts[0] == "api" and len(parts) >= 4:
            repo_type, repo_id, rest = self._split_repo(parts[1:])
            repo_type = PREFIXES.get(parts[1], repo_type)
            repo = self._repo(repo_type, repo_id, head)
            if repo is None:
                return
            if not rest or rest[0] == "revision":
                sha = self._revision(repo, rest[1] if len(rest) > 1 else "main", head)
                if sha is None:
                    return
                files = repo.commits[sha]
                return self._send(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                                        "siblings": [{"rfilename": p} for p in sorted(files)]}, head=head)
            if rest[0] == "tree":
                sha = self._revision(repo, rest[1], head)
                if sha is None:
                    return
                prefix = "/".join(rest[2:])
                recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                return self._send(200, self._tree(repo.commits[sha], prefix, recursive), head=head)
        # /[datasets/]OWNER/REPO/resolve/REVISION/PATH
        if "resolve" in parts:
            i = parts.index("resolve")
            repo_type, repo_id, _ = self._split_repo(parts[:i])
            repo = self._repo(repo_type, repo_id, head)
            if repo is None:
                return
            sha = self._revision(repo, parts[i + 1], head)
            if sha is None:
                return
            path = "/".join(parts[i + 2:])
            content = repo.commits[sha].get(path)
            if content is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist at {sha}", head=head)
            return self._send(200, content, {"X-Repo-Commit": sha, "ETag": f'"{git_oid(content)}"',
                                             "Content-Type": "application/octet-stream"}, head=head)
        self._error(404, None, f"no route for GET {url.path}", head=head)

    def do_POST(self):
        self._record()
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        body = self._body()
        if parts[:3] == ["api", "repos", "create"]:
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            repo_type = payload.get("type") or "model"
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            answer = {"url": f"http://{self.headers.get('Host')}/{prefix}{repo_id}", "name": repo_id}
            with self.state.lock:
                if (repo_type, repo_id) in self.state.repos:  # the Hub answers 409 with the url
                    return self._send(409, {**answer, "error": "You already created this repo"})
                self.state.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type)
            return self._send(200, answer)
        if parts[:2] == ["api", "validate-yaml"]:  # the client checks a README.md's metadata before committing it
            import yaml

            content = json.loads(body)["content"]
            try:
                front = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
                assert isinstance(front, dict)
            except (yaml.YAMLError, AssertionError, IndexError) as err:
                return self._send(400, {"errors": [{"message": f"invalid metadata: {err}"}], "warnings": []})
            return self._send(200, {"errors": [], "warnings": []})
        if parts[0] != "api" or len(parts) < 5:
            return self._error(404, None, f"no route for POST {url.path}")
        repo_type, repo_id, rest = self._split_repo(parts[1:])
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        action, revision = rest[0], "/".join(rest[1:]) or "main"
        if action == "branch":
            with self.state.lock:
                if revision in repo.refs:
                    return self._error(409, None, f"Reference already exists: {revision}")
                start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                repo.refs[revision] = repo.resolve(start)
            return self._send(200, {})
        if action == "preupload":
            sha = self._revision(repo, revision)
            if sha is None:
                return
            files = repo.commits[sha]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                       "oid": git_oid(files[f["path"]]) if f["path"] in files else None}
                      for f in json.loads(body)["files"]]
            return self._send(200, {"files": answer})
        if action == "paths-info":
            sha = self._revision(repo, revision)
            if sha is None:
                return
            form = parse_qs(body.decode())
            files = repo.commits[sha]
            return self._send(200, [e for e in self._tree(files, "", True) if e["path"] in form.get("paths", [])])
        if action == "commit":
            if repo.resolve(revision) is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            added, deleted = {}, []
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(item["value"]["path"])
                elif item["key"] == "lfsFile":
                    return self._error(400, None, "this test server takes regular files only")
            with self.state.lock:
                sha = repo.commit(revision, added, deleted)
            host = self.headers.get("Host")
            return self._send(200, {"success": True, "commitOid": sha, "pullRequestUrl": None,
                                    "commitUrl": f"http://{host}/{repo_id}/commit/{sha}"})
        self._error(404, None, f"no route for POST {url.path}")

    @staticmethod
    def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        entries, folders = [], set()
        for path, content in sorted(files.items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            rel = path[len(prefix.rstrip("/")) + 1:] if prefix else path
            if "/" in rel and not recursive:
                folders.add((prefix.rstrip("/") + "/" if prefix else "") + rel.split("/")[0])
                continue
            entries.append({"type": "file", "oid": git_oid(content), "size": len(content), "path": path})
            if recursive:
                parts = path.split("/")[:-1]
                folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)] + entries


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.url` goes into HF_ENDPOINT."""

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        repo = self.state.repos[(repo_type, repo_id)]
        return repo.commits[repo.resolve(revision)]


if __name__ == "__main__":
    import time

    with HubServer() as hub:
        print(f"export HF_ENDPOINT={hub.url}", flush=True)
        while True:
            time.sleep(3600)
