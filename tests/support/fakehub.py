"""A fake Hugging Face Hub on loopback: the four endpoints ``huggingface_hub.snapshot_download``
calls (revision info, recursive tree, HEAD and GET of ``resolve``), enough to test the hf://
fetch path offline.

What it does not reproduce: Xet storage and LFS redirects to a CDN, gated repositories, rate
limits, and the real Hub's pagination of large trees; those paths of huggingface_hub are not
exercised by the tests that use it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote, urlparse

# repo id -> revision name -> (commit sha, {path: content})
Repos = Mapping[str, Mapping[str, tuple[str, Mapping[str, bytes]]]]


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@dataclass
class HubRequest:
    """One request the fake Hub answered."""

    method: str
    path: str
    authorization: str | None


@dataclass
class FakeHub:
    """``with FakeHub(repos) as hub: hub.url``; ``hub.requests`` lists what was asked."""

    repos: Repos
    requests: list[HubRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def _find(self, repo: str, revision: str) -> tuple[str, Mapping[str, bytes]] | None:
        for name, (sha, files) in self.repos.get(repo, {}).items():
            if revision in (name, sha):
                return sha, files
        return None

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _send(self, code: int, body: bytes, headers: Mapping[str, str]) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, data: object) -> None:
                self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                hub.requests.append(HubRequest(self.command, self.path, self.headers.get("authorization")))
                parts = unquote(urlparse(self.path).path).strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    repo, kind, revision = "/".join(parts[2:4]), parts[4], parts[5]
                    hit = hub._find(repo, revision)
                    if hit is None:
                        self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"})
                    elif kind == "revision":
                        self._json(
                            {"id": repo, "sha": hit[0], "siblings": [{"rfilename": f} for f in hit[1]]}
                        )
                    else:
                        self._json(
                            [
                                {"type": "file", "oid": _git_blob_id(body), "size": len(body), "path": path}
                                for path, body in hit[1].items()
                            ]
                        )
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    hit = hub._find("/".join(parts[:2]), parts[3])
                    path = "/".join(parts[4:])
                    if hit is None or path not in hit[1]:
                        self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                        return
                    body = hit[1][path]
                    self._send(200, body, {"ETag": f'"{_git_blob_id(body)}"', "X-Repo-Commit": hit[0]})
                    return
                self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
