"""A local stand-in for the Hugging Face hub, enough for huggingface_hub 2.4.0 to download from
it as from huggingface.co (the hub is unreachable from the test machines). Stdlib only.

It serves local folders as model repositories, answering what huggingface_hub sends:
- GET/HEAD /api/models/{repo} and /api/models/{repo}/revision/{rev} (HfApi.model_info): the
  JSON with `sha` (a commit id made from the files) and `siblings`, which with ?blobs=True
  (files_metadata=True) carry size, blobId and, for LFS files, lfs {size, sha256, pointerSize};
- HEAD/GET /{repo}/resolve/{rev}/{file} (get_hf_file_metadata, hf_hub_download): a small file
  answers 200 with ETag = its git blob id; an LFS file (*.safetensors and other weights, or
  anything over LFS_THRESHOLD) answers 302 to a second port, the "CDN", with X-Linked-Etag =
  its sha256 and X-Linked-Size, as the hub redirects to its CDN. The CDN is another origin, so
  the client stops at the 302 and drops its token (utils/_http.py,
  _httpx2_follow_hub_redirects_with_backoff). Every answer about a file has X-Repo-Commit;
  errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the hub's do.
- Range requests (bytes=N- and bytes=N-M) get 206 with Content-Range, everywhere;
- GET /api/agent-harnesses (an empty registry): huggingface_hub fetches it once a day into
  HF_HOME for its user-agent (utils/_detect_agent.py).
No X-Xet-Hash header nor xet-auth link is ever sent, so huggingface_hub never tries the Xet
protocol (utils/_xet.py, parse_xet_file_data_from_response returns None).

Faults for the tests, each by file name: `cut` (close the connection once the answer has
reached byte N of the file, once), `stall` (stop at byte N and hang until `release()` or
`close()`, once: the test interrupts the client meanwhile), `corrupt` (serve the file with one
byte changed) and `missing` (absent from the listing and 404). `requests` records every request
(method, path, query, Range, Authorization, answer status, server "hub" or "cdn").
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.onnx", "*.onnx.data", "*.model", "*.pt")
LFS_THRESHOLD = 10 * 1024 * 1024
CHUNK = 1 << 20


@dataclass
class RepoFile:
    name: str
    path: Path
    size: int
    lfs: bool
    sha256: str | None  # LFS files only
    blob_id: str        # git object id: of the file, or of its LFS pointer


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _scan(folder: Path) -> dict[str, RepoFile]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        name = p.relative_to(folder).as_posix()
        size = p.stat().st_size
        lfs = size > LFS_THRESHOLD or any(fnmatch.fnmatch(name, pat) for pat in LFS_PATTERNS)
        if lfs:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            sha = h.hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"
            files[name] = RepoFile(name, p, size, True, sha, _git_blob_id(pointer.encode()))
        else:
            files[name] = RepoFile(name, p, size, False, None, _git_blob_id(p.read_bytes()))
    return files


class HubStandin:
    """Serves {repo_id: folder} on 127.0.0.1 (`endpoint`), its "CDN" on a second port."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {r: _scan(Path(d)) for r, d in repos.items()}
        self.commits = {r: hashlib.sha1(json.dumps(sorted((f.name, f.blob_id) for f in fs.values()))
                                        .encode()).hexdigest() for r, fs in self.repos.items()}
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.cut: dict[str, int] = {}
        self.stall: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.missing: set[str] = set()
        self.stalled = threading.Event()
        self._release = threading.Event()
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        for s in (self.hub, self.cdn):
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def reset(self) -> None:
        """No faults, an empty request log."""
        with self.lock:
            self.requests.clear()
            self.cut.clear()
            self.stall.clear()
            self.corrupt.clear()
            self.missing.clear()
            self.stalled.clear()
            self._release.clear()

    def release(self) -> None:
        """Lets a stalled answer end (by closing its connection)."""
        self._release.set()

    def close(self) -> None:
        self._release.set()
        for s in (self.hub, self.cdn):
            s.shutdown()
            s.server_close()

    def requests_for(self, name: str, server: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"].endswith("/" + name)
                    and (server is None or r["server"] == server)]

    def _handler(self, server: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: the request log is `requests`
                pass

            def do_HEAD(self):
                self._dispatch(head=True)

            def do_GET(self):
                self._dispatch(head=False)

            def _dispatch(self, head: bool):
                url = urlsplit(self.path)
                self.record = {"server": server, "method": self.command, "path": unquote(url.path),
                               "query": url.query,
                               "range": self.headers.get("Range"),
                               "authorization": self.headers.get("Authorization")}
                with hub.lock:
                    hub.requests.append(self.record)
                try:
                    if server == "cdn":
                        self._cdn(url.path, head)
                    else:
                        self._hub(url.path, parse_qs(url.query), head)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            # -- answers -----------------------------------------------------------------------
            def _send(self, status: int, headers: dict, body: bytes = b"", head: bool = False):
                self.record["status"] = status
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, str(v))
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)

            def _error(self, status: int, code: str | None, message: str, head: bool, extra=None):
                headers = {"Content-Type": "application/json", **(extra or {})}
                if code:
                    headers["X-Error-Code"] = code
                    headers["X-Error-Message"] = message
                self._send(status, headers, json.dumps({"error": message}).encode(), head)

            def _repo_of(self, rest: str):
                """(repo_id, remainder) for a path that starts with a served repo id."""
                for repo in hub.repos:
                    if rest == repo or rest.startswith(repo + "/"):
                        return repo, rest[len(repo):]
                return None, rest

            def _hub(self, path: str, query: dict, head: bool):
                path = unquote(path)
                if path == "/api/agent-harnesses":  # fetched by build_hf_headers' agent detection
                    return self._send(200, {"Content-Type": "application/json"},
                                      b'{"standardEnvVars": [], "harnesses": {}}', head)
                if path.startswith("/api/models/"):
                    repo, rest = self._repo_of(path[len("/api/models/"):])
                    if repo is None:
                        return self._error(404, "RepoNotFound", "Repository not found", head)
                    if rest in ("", "/"):
                        revision = "main"
                    elif rest.startswith("/revision/"):
                        revision = rest[len("/revision/"):]
                    else:
                        return self._error(404, None, "Not found", head)
                    if revision not in ("main", hub.commits[repo]):
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
                    blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
                    return self._send(200, {"Content-Type": "application/json"},
                                      json.dumps(self._model_info(repo, blobs)).encode(), head)
                repo, rest = self._repo_of(path[1:])
                if repo is None or not rest.startswith("/resolve/"):
                    return self._error(404, "RepoNotFound" if repo is None else None,
                                       "Repository not found" if repo is None else "Not found", head)
                revision, _, name = rest[len("/resolve/"):].partition("/")
                commit = hub.commits[repo]
                if revision not in ("main", commit):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
                f = hub.repos[repo].get(name)
                if f is None or name in hub.missing:
                    return self._error(404, "EntryNotFound", f"{name} does not exist on \"{revision}\"",
                                       head, {"X-Repo-Commit": commit})
                if f.lfs:
                    location = f"{hub.cdn_url}/cdn/{repo}/{f.sha256}/{name}"
                    return self._send(302, {"Location": location, "X-Repo-Commit": commit,
                                            "ETag": f'"{f.blob_id}"', "X-Linked-Etag": f'"{f.sha256}"',
                                            "X-Linked-Size": f.size}, b"", head)
                self._file(f, {"X-Repo-Commit": commit, "ETag": f'"{f.blob_id}"'}, head)

            def _model_info(self, repo: str, blobs: bool) -> dict:
                siblings = []
                for f in hub.repos[repo].values():
                    if f.name in hub.missing:
                        continue
                    s = {"rfilename": f.name}
                    if blobs:
                        s.update(size=f.size, blobId=f.blob_id)
                        if f.lfs:
                            s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
                    siblings.append(s)
                return {"_id": hub.commits[repo][:24], "id": repo, "modelId": repo,
                        "sha": hub.commits[repo], "lastModified": "2026-01-01T00:00:00.000Z",
                        "private": False, "gated": False, "disabled": False, "downloads": 0,
                        "likes": 0, "tags": [], "library_name": "transformers",
                        "siblings": siblings}

            def _cdn(self, path: str, head: bool):
                parts = unquote(path).split("/")  # "", "cdn", owner, name, sha256, file...
                repo = "/".join(parts[2:4])
                f = hub.repos.get(repo, {}).get("/".join(parts[5:]))
                if len(parts) < 6 or parts[1] != "cdn" or f is None or f.sha256 != parts[4]:
                    return self._error(404, None, "NoSuchKey", head)
                self._file(f, {"ETag": f'"{f.sha256}"'}, head)

            def _file(self, f: RepoFile, headers: dict, head: bool):
                """The file's bytes (or a Range of them), with the faults armed for it."""
                start, end = 0, f.size - 1
                rng = self.headers.get("Range")
                status = 200
                if rng:
                    spec = rng.strip()
                    if not spec.startswith("bytes=") or "," in spec:
                        return self._error(416, None, "Unsupported range", head)
                    a, _, b = spec[len("bytes="):].partition("-")
                    start = int(a) if a else f.size - int(b)
                    end = min(int(b), f.size - 1) if a and b else f.size - 1
                    if start >= f.size or start > end:
                        return self._error(416, None, "Range not satisfiable", head,
                                           {"Content-Range": f"bytes */{f.size}"})
                    status = 206
                    headers = {**headers, "Content-Range": f"bytes {start}-{end}/{f.size}"}
                self._send(status, {**headers, "Content-Type": "application/octet-stream",
                                    "Content-Length": end - start + 1, "Accept-Ranges": "bytes"},
                           head=True)
                if head:
                    return
                with hub.lock:
                    cut = hub.cut.pop(f.name, None)
                    stall = hub.stall.pop(f.name, None) if cut is None else None
                stop = cut if cut is not None else stall
                pos = start
                with open(f.path, "rb") as src:
                    src.seek(start)
                    while pos <= end:
                        n = min(CHUNK, end + 1 - pos)
                        if stop is not None and stop > pos:
                            n = min(n, stop - pos)
                        elif stop is not None:  # reached the fault's byte
                            self.wfile.flush()
                            if stall is not None:
                                hub.stalled.set()
                                hub._release.wait(60)
                            self.record["cut_at"] = pos
                            self.close_connection = True
                            return
                        data = src.read(n)
                        if f.name in hub.corrupt and pos <= f.size // 2 < pos + len(data):
                            i = f.size // 2 - pos
                            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                        self.wfile.write(data)
                        pos += len(data)

        return Handler
