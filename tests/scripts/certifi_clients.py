"""requests and httpx (HTTP/2) GET one URL with their default verification (certifi's
bundle); prints one JSON line: where certifi is, each client's body and httpx's version.

usage: certifi_clients.py URL
"""
import json
import sys

import certifi
import httpx
import requests

url = sys.argv[1]
report = {"certifi": certifi.where()}
r = requests.get(url, timeout=20)
report["requests"] = r.text
with httpx.Client(http2=True, timeout=20) as client:
    h = client.get(url)
report["httpx"] = h.text
report["httpx_version"] = h.http_version
print(json.dumps(report))
