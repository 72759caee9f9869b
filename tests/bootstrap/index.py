"""A package index on 127.0.0.1 for the bootstrap's tests, with no network: tiny wheels
written by hand (a zip with METADATA, WHEEL and RECORD), source distributions whose build
fails as one needing a compiler would, a PEP 691 JSON simple API (PEP 503 HTML for clients
that do not ask for JSON) serving them, and a forward HTTP proxy that VMs' requests can
be sent through."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterable, Optional

from ..localhttp import LocalHTTP

JSON_SIMPLE = "application/vnd.pypi.simple.v1+json"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel(dest: Path, name: str, version: str, requires: Iterable[str] = (), tag: str = "py3-none-any",
          extra: Optional[dict[str, bytes]] = None) -> Path:
    """A pure wheel of ``name`` ``version`` (a module of the same name, its version in it),
    declaring ``requires``; ``extra`` files too (e.g. ``<name>-<v>.data/scripts/<x>``)."""
    module = re.sub(r"[-.]+", "_", name).lower()
    dist = f"{module}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{module}/__init__.py": f"__version__ = {version!r}\n".encode(),
             f"{dist}.dist-info/METADATA": meta.encode(),
             f"{dist}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: coiled-lab-tests\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
             **(extra or {})}
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    path = dest / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name_, data in files.items():
            info = zipfile.ZipInfo(name_, (2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if "/scripts/" in name_ else 0o644) << 16
            archive.writestr(info, data)
    return path


def failing_sdist(dest: Path, name: str, version: str,
                  error: str = "error: command 'gcc' failed: No such file or directory") -> Path:
    """A source distribution whose in-tree build backend fails the way a package needing a
    compiler fails on an image without one (no build dependency to fetch: works offline)."""
    base = f"{name}-{version}"
    backend = ("import sys\n"
               "def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
               "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n"
               "    print('running build_ext', file=sys.stderr)\n"
               f"    raise SystemExit({error!r})\n")
    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
             "backend.py": backend,
             "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"}
    path = dest / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for file, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{file}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _project(filename: str) -> str:
    stem = filename[:-4] if filename.endswith(".whl") else filename[:-7]
    return re.sub(r"[-_.]+", "-", stem.split("-")[0]).lower()


class Index(LocalHTTP):
    """Serves the distributions in ``root`` at ``<url>/simple/<project>/`` (PEP 691 JSON or
    PEP 503 HTML, with sha256 hashes) and ``<url>/files/<filename>``. ``lie`` maps a
    filename to the sha256 the index claims for it instead of the real one."""

    def __init__(self, root: Path):
        self.root = root
        self.lie: dict[str, str] = {}
        super().__init__()
        self.simple = f"{self.url}/simple"

    def add(self, path: Path) -> Path:
        if path.parent != self.root:
            shutil.copy(path, self.root / path.name)
        return self.root / path.name

    def files(self, project: str) -> list[dict]:
        out = []
        for path in sorted(self.root.iterdir()):
            if path.name.endswith((".whl", ".tar.gz")) and _project(path.name) == project:
                digest = self.lie.get(path.name) or hashlib.sha256(path.read_bytes()).hexdigest()
                out.append({"filename": path.name, "url": f"../../files/{path.name}", "hashes": {"sha256": digest}})
        return out

    def paths(self, prefix: str) -> list[str]:
        """The paths under ``prefix`` that were read (GET)."""
        return [r["path"] for r in self.requests if r["path"].startswith(prefix) and r["method"] == "GET"]

    def _handler(self):
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # uv asks before reading a wheel's metadata
                self.do_GET()

            def do_GET(self) -> None:
                index.requests.append({"path": self.path, "accept": self.headers.get("Accept", ""),
                                       "method": self.command})
                simple = re.fullmatch(r"/simple/([^/]+)/?", self.path)
                if simple:
                    files = index.files(re.sub(r"[-_.]+", "-", simple.group(1)).lower())
                    if not files:
                        return self._send(404, b"not found")
                    if JSON_SIMPLE in self.headers.get("Accept", ""):
                        body = {"meta": {"api-version": "1.1"}, "name": simple.group(1), "files": files}
                        return self._send(200, json.dumps(body).encode(), JSON_SIMPLE)
                    links = "".join(f'<a href="{html.escape(f["url"])}#sha256={f["hashes"]["sha256"]}">'
                                    f'{html.escape(f["filename"])}</a>\n' for f in files)
                    return self._send(200, f"<html><body>{links}</body></html>".encode(), "text/html")
                found = re.fullmatch(r"/files/([^/]+)", self.path)
                if found and (index.root / found.group(1)).is_file():
                    return self._send(200, (index.root / found.group(1)).read_bytes(), "application/octet-stream")
                self._send(404, b"not found")

        return Handler


class ForwardProxy(LocalHTTP):
    """An HTTP forward proxy (``http_proxy=<url>``): plain-HTTP requests in absolute form
    are fetched and answered; each one's URL is recorded."""

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy.requests.append({"url": self.path, "method": self.command})
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "host")}
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                request = urllib.request.Request(self.path, headers=headers, method=self.command)
                try:
                    with opener.open(request, timeout=30) as answer:
                        body, status, kind = answer.read(), answer.status, answer.headers.get("Content-Type", "")
                        length = answer.headers.get("Content-Length", str(len(body)))
                except urllib.error.HTTPError as exc:
                    body, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
                    length = str(len(body))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

        return Handler

