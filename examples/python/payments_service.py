"""An example Python service opted in to Coral: a tiny payments API.

    python examples/python/payments_service.py --port 8080
    curl 'http://127.0.0.1:8080/charge?card=4111111111111111&amount=1250'

GET /charge?card=...&amount=... calls payments.validate_card and answers
its result as JSON (402 when declined, 400 on bad input). With --port 0 a
free port is chosen; either way "listening on PORT" is printed once the
server accepts connections.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit

import payments

import coral.sdk


class PaymentsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/charge":
            self.reply(404, {"error": "not found"})
            return
        query = parse_qs(url.query)
        card = query.get("card", [""])[0]
        try:
            amount = int(query.get("amount", [""])[0])
        except ValueError:
            self.reply(400, {"error": "amount must be an integer number of cents"})
            return
        try:
            result = payments.validate_card(card, amount)
        except ValueError as exc:
            self.reply(402, {"error": str(exc)})
            return
        self.reply(200, result)

    def reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        logging.getLogger("payments.http").debug(format, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Example payments API opted in to Coral live debugging.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: pick a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    coral.sdk.init(service="payments-api")

    server = ThreadingHTTPServer((args.host, args.port), PaymentsHandler)
    server.daemon_threads = True

    def stop(signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return: not from its own thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
