"""A local HTTP endpoint that answers like the AWS Price List API (``GetProducts``), for
the few products the tests ask about. moto does not implement that API."""

from __future__ import annotations

import json
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


class PriceList(LocalHTTP):
    def _handler(self):
        book = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["X-Amz-Target"] == "AWSPriceListService.GetProducts"
                book.requests.append(body)
                f = {x["Field"]: x["Value"] for x in body["Filters"]}
                items = []
                if "instanceType" in f and (f["regionCode"], f["instanceType"]) in ON_DEMAND:
                    items.append(_product(f, "Hrs", ON_DEMAND[(f["regionCode"], f["instanceType"])]))
                if f.get("productFamily") == "Storage" and (f["regionCode"], f["volumeApiName"]) in EBS:
                    items.append(_product(f, "GB-Mo", EBS[(f["regionCode"], f["volumeApiName"])]))
                out = json.dumps({"FormatVersion": "aws_v1", "PriceList": items}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        return Handler
