"""A local HTTP server for the URL tests: byte ranges and folder index pages.

Run as ``python range_server.py FOLDER``: serves FOLDER on 127.0.0.1 at a free
port, which it prints on its first line. It honours ``Range: bytes=a-b``
requests (as GDAL's /vsicurl/ makes them) and serves folders as Apache-style
"Index of" pages (which GDAL lists), as web servers that host COGs do. It runs
in its own process: GDAL calls that hold the GIL (folder listings) would
otherwise wait on a server thread of the same process.
"""

import functools
import html
import http.server
import io
import os
import re
import sys
import urllib.parse
from typing import Any, BinaryIO


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges, and folder index pages."""

    def send_head(self) -> Any:
        """Answer a ``Range`` request with 206 and that part of the file."""
        match = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range') or '')
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
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
        """Send the asked range only."""
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


if __name__ == '__main__':
    handler = functools.partial(RangeHandler, directory=sys.argv[1])
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
