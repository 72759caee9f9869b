"""A local HTTP endpoint that answers like the AWS Price List API (``GetProducts``), for
the few products the tests ask about. moto does not implement that API.

Its faults are the ones seen in the field: ``status = 500`` answers as moto does for a
service it lacks (a non-AWS body), ``delay`` holds each answer that many seconds (for
ever, in effect, with :data:`HANG`) - until :meth:`reset` or :meth:`close`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler

from .localhttp import LocalHTTP

ON_DEMAND = {("us-east-1", "m6i.large"): 0.096, ("us-east-1", "m6i.xlarge"): 0.192,
             ("us-east-1", "g4dn.xlarge"): 0.526, ("eu-west-1", "m6i.xlarge"): 0.214}
EBS = {("us-east-1", "gp3"): 0.08, ("eu-west-1", "gp3"): 0.088,
       ("us-east-1", "standard"): 0.05}  # moto's images have magnetic ("standard") root volumes


def _product(attributes: dict, unit: str, usd: float) -> str:
    return json.dumps({
        "product": {"productFamily": "Compute Instance" if unit == "Hrs" else "Storage", "attributes": attributes},
        "terms": {"OnDemand": {"SKU.TERM": {"priceDimensions": {
            "SKU.TERM.DIM": {"unit": unit, "pricePerUnit": {"USD": f"{usd:.10f}"}, "description": "x"},
            "SKU.TERM.ZERO": {"unit": unit, "pricePerUnit": {"USD": "0.0000000000"}, "description": "reserved"},
        }}}},
    })


HANG = 3600.0


class PriceList(LocalHTTP):
    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self._released = threading.Event()  # ends every delay at once
        super().__init__()

    def reset(self) -> None:
        """Answer at once and well again; requests held now are answered."""
        self.status, self.delay = 200, 0.0
        self._released.set()
        self._released = threading.Event()

    def close(self) -> None:
        self._released.set()
        super().close()

    def _handler(self):
        book = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["X-Amz-Target"] == "AWSPriceListService.GetProducts"
                book.requests.append(body)
                book._released.wait(book.delay)
                if book.status != 200:
                    out = b"<html><body>Internal Server Error</body></html>"
                    self.send_response(book.status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                f = {x["Field"]: x["Value"] for x in body["Filters"]}
                items = []  # without a regionCode filter: the product in every region
                for (region, name), usd in ON_DEMAND.items():
                    if f.get("instanceType") == name and f.get("regionCode", region) == region:
                        items.append(_product({**f, "regionCode": region}, "Hrs", usd))
                for (region, volume), usd in EBS.items():
                    if f.get("productFamily") == "Storage" and f.get("volumeApiName") == volume and \
                            f.get("regionCode", region) == region:
                        items.append(_product({**f, "regionCode": region}, "GB-Mo", usd))
                out = json.dumps({"FormatVersion": "aws_v1", "PriceList": items}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        return Handler
