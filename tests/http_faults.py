"""A real HTTP server on 127.0.0.1 serving pool images and one fault per path (download tests)."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT = 1.0
DRIP_EVERY = 0.3  # seconds between the bytes of a drip-fed response
STREAM_BYTES = 300 << 20  # the streamed body: generated as it is sent, never held whole
_ZEROS = bytes(1 << 16)


class FaultyHandler(BaseHTTPRequestHandler):
    """Serves pool images at /img/N.jpg and one fault per other path."""

    images: list[bytes] = []
    attempts: dict[str, int] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, content_type: str = "image/jpeg", length: int | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path
        self.attempts[path] = self.attempts.get(path, 0) + 1
        if path.startswith("/img/"):
            self._send(200, self.images[int(path.split("/")[-1].split(".")[0])])
        elif path == "/missing.jpg":
            self._send(404, b"not found", "text/plain")
        elif path == "/error.jpg":
            self._send(500, b"boom", "text/plain")
        elif path == "/flaky.jpg":  # fails once, then works: a retry must fetch it
            if self.attempts[path] == 1:
                self._send(503, b"busy", "text/plain")
            else:
                self._send(200, self.images[0])
        elif path == "/slow.jpg":
            time.sleep(TIMEOUT * 2.5)
            self._send(200, self.images[0])
        elif path == "/truncated.jpg":
            self._send(200, self.images[1][:1000], length=len(self.images[1]))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)  # a clean EOF mid-body, not a reset
            self.close_connection = True
        elif path == "/page.jpg":
            self._send(200, b"<html><body>a web page, not an image</body></html>", "text/html")
        elif path == "/loop.jpg":
            self.send_response(302)
            self.send_header("Location", "/loop.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/huge.jpg":
            self._send(200, self.images[0] + b"\0" * 3_000_000)
        elif path == "/robots.jpg":
            self.send_response(200)
            self.send_header("X-Robots-Tag", "noai")
            self.send_header("Content-Length", str(len(self.images[0])))
            self.end_headers()
            self.wfile.write(self.images[0])
        elif path in ("/drip.jpg", "/drip-headers.jpg"):
            self._drip(path == "/drip-headers.jpg")
        elif path in ("/stream.jpg", "/stream-declared.jpg"):
            self._stream(declared=path == "/stream-declared.jpg")
        elif path == "/to-file.jpg":  # a redirect off the web, to a local file
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"?", "text/plain")

    def _drip(self, headers_too: bool):
        """One byte every DRIP_EVERY seconds: of the whole response, or of the body after prompt
        headers (a 1,000-byte Content-Length); every read is quick, the response never ends in time."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
        try:
            if not headers_too:
                self.wfile.write(head)
            for byte in (head if headers_too else b"") + b"\xff" * 1000:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(DRIP_EVERY)
        except OSError:  # the client gave up
            self.close_connection = True

    def _stream(self, declared: bool):
        """STREAM_BYTES of body written a chunk at a time, with or without a Content-Length
        (without, the body ends when the connection closes)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if declared:
            self.send_header("Content-Length", str(STREAM_BYTES))
        self.end_headers()
        try:
            for _ in range(STREAM_BYTES // len(_ZEROS)):
                self.wfile.write(_ZEROS)
        except OSError:  # the client stopped reading
            pass
        self.close_connection = True


def serve(images: list[bytes]):
    """Start the server in a thread; returns (base URL, server) — call server.shutdown() when done."""
    FaultyHandler.images = images
    FaultyHandler.attempts = {}
    ThreadingHTTPServer.request_queue_size = 128  # the default backlog of 5 refuses a burst of parallel downloads
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FaultyHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", httpd


