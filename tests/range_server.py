"""A local HTTP server for the URL tests: byte ranges and folder index pages.

``with serve(folder) as server:`` serves *folder* on 127.0.0.1 at a free port
(``server.url``), as web servers and object stores that host COGs do: it honours
``Range: bytes=a-b`` requests (as GDAL's /vsicurl/ makes them) and serves folders
as Apache-style "Index of" pages (which GDAL lists). ``server.requests()`` are
the files' bytes sent so far, one GET each: (path, ``Range`` header or
``whole``). ``with unresponsive() as (url, listening):`` is a server that
accepts connections and never answers.

The server runs in its own process (``python range_server.py FOLDER [LOG]``
prints its port on its first line): GDAL calls that hold the GIL (folder
listings) would otherwise wait on a server thread of the same process.
"""

import functools
import html
import http.server
import io
import os
import re
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges, and folder index pages."""

    #: File the files' bytes sent are logged to (one GET a line), if any.
    log: str | None = None

    def send_head(self) -> Any:
        """Answer a ``Range`` request with 206 and that part of the file."""
        match = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range') or '')
        path = self.translate_path(self.path)
        is_file = os.path.isfile(path)
        # What of which file a GET sends, for the log.
        sent = match.group(0) if match else 'whole'
        self.sent = f'{self.path} {sent}' if is_file else None
        if match is None or not is_file:
            self.remaining = None
            return super().send_head()
        size = os.path.getsize(path)
        start = int(match.group(1))
        end = min(int(match.group(2) or size - 1), size - 1)
        source = open(path, 'rb')  # noqa: SIM115 (closed by the base class)
        source.seek(start)
        self.send_response(206)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
        self.send_header('Content-Length', str(end - start + 1))
        self.send_header('Accept-Ranges', 'bytes')
        self.end_headers()
        self.remaining = end - start + 1
        return source

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:  # type: ignore[override]
        """Send the asked range only (and log what of which file was sent)."""
        if self.log is not None and self.sent is not None:
            with open(self.log, 'a') as f:
                f.write(self.sent + '\n')
        if self.remaining is None:
            super().copyfile(source, outputfile)
        else:
            outputfile.write(source.read(self.remaining))

    def list_directory(self, path: str | os.PathLike[str]) -> io.BytesIO:
        """An Apache-style index page of a folder."""
        title = f'Index of {urllib.parse.unquote(self.path)}'
        items = []
        for name in sorted(os.listdir(path)):
            shown = name + '/' if os.path.isdir(os.path.join(path, name)) else name
            quoted = urllib.parse.quote(shown)
            items.append(f'<li><a href="{quoted}">{html.escape(shown)}</a></li>')
        # One element a line: GDAL parses index pages line by line.
        lines = [
            f'<html><head><title>{title}</title></head><body>',
            f'<h1>{title}</h1>',
        ]
        page = '\n'.join([*lines, '<ul>', *items, '</ul></body></html>']).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.send_header('Content-Length', str(len(page)))
        self.end_headers()
        return io.BytesIO(page)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@dataclass(frozen=True)
class ServedFolder:
    """A folder being served.

    Attributes:
        url: the base URL of the folder (no trailing ``/``).
        log: the file of the files' bytes sent (one GET a line).
    """

    url: str
    log: Path

    def requests(self) -> list[tuple[str, str]]:
        """The files' bytes sent so far, one GET each: (path, range or ``whole``)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [(path, ranges) for path, ranges in (s.split(' ', 1) for s in lines)]


@contextmanager
def serve(folder: str | os.PathLike[str]) -> Iterator[ServedFolder]:
    """Serve a folder over HTTP with byte ranges, in another process.

    Args:
        folder: the folder to serve.

    Yields:
        the served folder; the server stops on leaving.
    """
    log = Path(folder).parent / f'{Path(folder).name}.requests.log'
    server = subprocess.Popen(
        [sys.executable, __file__, os.fspath(folder), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        yield ServedFolder(f'http://127.0.0.1:{port}', log)
    finally:
        server.kill()
        server.wait()


@contextmanager
def unresponsive() -> Iterator[tuple[str, socket.socket]]:
    """A server on 127.0.0.1 that accepts connections and never answers.

    The kernel accepts them into the listening socket's queue; nothing reads
    them. The socket is readable once a client has connected.

    Yields:
        (base URL, no trailing ``/``; the listening socket).
    """
    with socket.socket() as listening:
        listening.bind(('127.0.0.1', 0))
        listening.listen(64)
        yield f'http://127.0.0.1:{listening.getsockname()[1]}', listening


if __name__ == '__main__':
    folder, *log = sys.argv[1:]
    handler = functools.partial(RangeHandler, directory=folder)
    RangeHandler.log = log[0] if log else None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()
