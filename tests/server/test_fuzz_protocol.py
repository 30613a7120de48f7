"""Protocol fuzz test: at least 10,000 adversarial requests (hypothesis) against the real server.

Wrong types, truncated safetensors, huge headers, wrong dtypes and shapes, replayed and forged
tokens, oversized and slow bodies, over real loopback HTTP. No well-formed update is ever sent,
so the server must: never crash (no 5xx, still serving afterwards), accept no update, keep its
memory bounded, and leave the model bitwise unchanged. Runs in CI (well under 2 minutes).
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
from collections import Counter
from typing import Any, Optional
from urllib.parse import urlparse

import pytest
import torch
from helpers.loopback import make_coordinator, make_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftte_cli.client import wire
from ftte_cli.engine import serialize
from ftte_cli.server.runner import ServerThread

pytestmark = pytest.mark.slow  # every test here spawns processes, sshd or the testbed

TOKENS = {"a": "tok-a" * 8, "b": "tok-b" * 8}
BATCH = 10  # requests per hypothesis example
EXAMPLES = 1000  # x BATCH = 10,000 requests


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class Client:
    """One keep-alive HTTP connection to the server; reconnects after the server closes it."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.conn: Optional[http.client.HTTPConnection] = None
        self.codes: Counter[int] = Counter()
        self.sent = 0

    def request(self, method: str, path: str, body: Optional[bytes],
                headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                self.sent += 1
                self.codes[resp.status] += 1
                return resp.status, data
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()  # the server may drop a connection after a refused body
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---- generated requests ------------------------------------------------------------------------

def _headers(device: str, token: str, ctype: Optional[str] = None) -> dict[str, str]:
    out = wire.auth_headers(device, token)
    if ctype:
        out["Content-Type"] = ctype
    return out


AUTHS = st.sampled_from([
    *[("a", TOKENS["a"])] * 7,  # about half valid, so bodies get past authentication
    ("b", TOKENS["a"]),  # a's token replayed under b's name
    ("a", TOKENS["b"]), ("a", "forged" * 8), ("mallory", TOKENS["a"]), ("", ""),
    ("a", TOKENS["a"][:-1]), ("a", TOKENS["a"] + "x"),
])
JSONISH = st.one_of(
    st.binary(max_size=64),
    st.just(b"[]"), st.just(b"null"), st.just(b'"x"'), st.just(b"{\"peak_memory\": -1}"),
    st.builds(lambda v: json.dumps({"peak_memory": v, "state": v}).encode(),
              st.one_of(st.integers(), st.text(max_size=8), st.floats(allow_nan=False),
                        st.lists(st.integers(), max_size=3), st.none())),
    st.just(b"{" + b" " * (wire.JSON_MAX_BYTES + 10) + b"}"),  # over the JSON bound
    st.just(b'{"a":' * 2000),  # deep nesting, truncated
)
WAITS = st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e309", "abc", "", "0x10", "0.05"])
BAD_META = {  # values each metadata field must refuse (or that name no job in flight)
    "job_id": ["", "j", "j0000000", "x" * 300],
    "version": ["", "nan", "x", "1.5", "-1", "1e400", "99999999999999999999999", "7"],
    "num_samples": ["", "nan", "-1", "0", "x", "1.5", "99999999999999999999999", "1e3"],
    "grad_variance": ["", "nan", "inf", "-inf", "-1", "-1e-9", "x", "1e400"],
    "peak_memory": ["", "-5", "x", "1e400"],
}
DTYPES = [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.uint8,
          torch.bool, torch.int8]


def _mutated_delta(subset: dict[str, torch.Tensor], how: str, pick: int,
                   value: float) -> dict[str, torch.Tensor]:
    """A delta over w* that is wrong in exactly one way (never a well-formed update)."""
    names = sorted(subset)
    name = names[pick % len(names)]
    delta = {k: torch.full_like(v, 0.001) for k, v in subset.items()}
    if how == "dtype":
        delta[name] = delta[name].to(DTYPES[pick % len(DTYPES)])
    elif how == "shape":
        delta[name] = torch.zeros(delta[name].numel() + 1 + pick % 3)
    elif how == "transposed":
        t = delta[name]
        delta[name] = t.reshape(-1, 1) if t.dim() == 1 else t.reshape(t.shape[::-1])
        if delta[name].shape == t.shape:
            delta[name] = t.reshape(1, *t.shape)
    elif how == "missing":
        del delta[name]
    elif how == "extra":
        delta[f"{name}.extra"] = torch.zeros(3)
    elif how == "renamed":
        delta["features.0.conv.weight"] = delta.pop(name)  # a frozen parameter
    elif how == "nonfinite":
        delta[name].view(-1)[0] = [float("nan"), float("inf"), float("-inf")][pick % 3]
    else:  # huge: finite values far over the norm bound
        delta[name] = torch.full_like(delta[name], max(abs(value), 1e6))
    return delta


def _update_body(job: Optional[wire.JobMessage], subset: dict[str, torch.Tensor],
                 draw: Any) -> bytes:
    kind = draw(st.sampled_from(["mutated", "meta", "truncated", "header", "random", "empty",
                                 "oversized"]))
    job_id = job.job_id if job is not None else "j0000001"
    version = job.version if job is not None else 0
    if kind == "mutated":
        how = draw(st.sampled_from(["dtype", "shape", "transposed", "missing", "extra",
                                    "renamed", "nonfinite", "huge"]))
        delta = _mutated_delta(subset, how, draw(st.integers(0, 50)),
                               draw(st.floats(1e6, 1e38)))
        msg = wire.UpdateMessage(job_id, version, 40, 0.1, 1000, delta)
        return wire.encode_update(msg)
    good = {k: torch.full_like(v, 0.001) for k, v in subset.items()}
    if kind == "meta":  # right tensors, wrong metadata
        meta = {"job_id": job_id, "version": str(version), "num_samples": "40",
                "grad_variance": "0.1", "peak_memory": "1"}
        key = draw(st.sampled_from(sorted(meta) + ["job_id_other", "job_id_forged"]))
        if key == "job_id_other":
            meta["job_id"] = draw(st.sampled_from(["j0000002", "j9999999", "", "../x"]))
            meta["version"] = str(version + 1)  # and never the job's own version
        elif key == "job_id_forged":
            meta["job_id"] = draw(st.text(max_size=12))
            meta["version"] = str(draw(st.integers(-5, -1)))
        else:
            meta[key] = draw(st.sampled_from(BAD_META[key]))
            if key == "peak_memory":  # an odd peak memory alone is tolerated: break more
                meta["num_samples"] = "0"
        return serialize.tensors_to_bytes(good, meta)
    valid = wire.encode_update(wire.UpdateMessage(job_id, version, 40, 0.1, 1, good))
    if kind == "truncated":
        return valid[:int(len(valid) * draw(st.floats(0.0, 0.999)))]  # no state-dependent draw
    if kind == "header":  # safetensors' 8-byte header length, then a hostile JSON header
        size = draw(st.sampled_from([2**63 - 1, 2**40, len(valid) * 2, 7, 0]))
        header = draw(st.sampled_from([
            b'{"w": {"dtype": "F32", "shape": [1000000000], "data_offsets": [0, 4000000000]}}',
            b'{"w": {"dtype": "F8_E5M2", "shape": [4], "data_offsets": [0, 4]}}',
            b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
            b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}',
            b'{"__metadata__": {"job_id": 5}}',
            b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
            b'"v": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
            b"[" * 5000,
        ]))
        return struct.pack("<Q", size) + header + b"\0" * draw(st.integers(0, 16))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "empty":
        return b""
    return valid + b"\0" * (200 * 1024)  # over the update bound


@st.composite
def requests(draw: Any, state: dict[str, Any]) -> list[tuple[str, str, Optional[bytes], dict]]:
    out = []
    for _ in range(BATCH):
        device, token = draw(AUTHS)
        route = draw(st.sampled_from(["update"] * 5 + ["register", "heartbeat", "task",
                                                      "status", "other"]))
        if route == "update":
            body = _update_body(state.get("job"), state["subset"], draw)
            ctype = draw(st.sampled_from([wire.TENSOR_TYPE, "application/json", "text/plain"]))
            out.append(("POST", "/update", body, _headers(device, token, ctype)))
        elif route in ("register", "heartbeat"):
            out.append(("POST", f"/{route}", draw(JSONISH), _headers(device, token)))
        elif route == "task":
            out.append(("GET", f"/task?wait={draw(WAITS)}", None, _headers(device, token)))
        elif route == "status":
            out.append(("GET", "/status", None, _headers(device, token)))
        else:
            method = draw(st.sampled_from(["GET", "PUT", "DELETE", "POST"]))
            path = draw(st.sampled_from(["/update", "/register", "/../etc/passwd", "/x" * 50,
                                         "/task?wait=0&wait=1"]))
            out.append((method, path, draw(st.binary(max_size=32)), _headers(device, token)))
    return out


# ---- the test ----------------------------------------------------------------------------------

def _slow_bodies(url: str, n: int) -> list[socket.socket]:
    """n connections that announce an update body and send only part of it."""
    parsed = urlparse(url)
    socks = []
    for _ in range(n):
        s = socket.create_connection((parsed.hostname, parsed.port), timeout=10)
        head = (f"POST {wire.API}/update HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {TOKENS['a']}\r\nX-Ftte-Device: a\r\n"
                f"Content-Type: {wire.TENSOR_TYPE}\r\nContent-Length: 5000\r\n\r\n")
        s.sendall(head.encode() + b"\x10" * 100)
        socks.append(s)
    return socks


def test_protocol_fuzz_10000_adversarial_requests() -> None:
    started = time.monotonic()
    coord = make_coordinator(list(TOKENS), buffer_size=1)
    server = make_server(coord, TOKENS, [], start_devices=1, long_poll_max=0.05,
                         offline_after=3600.0)
    before = {k: v.clone() for k, v in coord.params.items()}
    with ServerThread(server) as stt:
        client = Client(stt.url)
        status, _ = client.request("POST", f"{wire.API}/register", b"{}",
                                   _headers("a", TOKENS["a"]))
        assert status == 200
        state: dict[str, Any] = {"subset": {k: v.clone() for k, v in coord.subset.items()}}
        updates_sent = Counter[int]()
        rss_start: list[int] = []

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def fuzz(data: st.DataObject) -> None:
            if not rss_start and client.sent > 1000:
                rss_start.append(_rss())  # after warm-up: allocator pools, imports, caches
            refresh = data.draw(st.integers(0, 9)) == 0  # drawn always: no state-dependent draws
            if state.get("job") is None or refresh:
                # a real job to aim at, so bodies reach the coordinator's checks
                status, body = client.request("GET", f"{wire.API}/task?wait=0.05", None,
                                              _headers("a", TOKENS["a"]))
                if status == 200:
                    state["job"] = wire.decode_job(body, 10 * 2**20)
                elif status == 409:
                    client.request("POST", f"{wire.API}/register", b"{}",
                                   _headers("a", TOKENS["a"]))
            for method, path, body, headers in data.draw(requests(state)):
                status, reply = client.request(method, wire.API + path, body, headers)
                assert status < 500, (method, path, status, reply[:300])
                if path == "/update" and method == "POST":
                    updates_sent[status] += 1
                    assert status != 200, ("a malformed update was accepted", reply[:300])

        fuzz()
        slow = _slow_bodies(stt.url, 50)  # slow bodies hold connections, not the server
        try:
            t0 = time.monotonic()
            status, body = client.request("GET", f"{wire.API}/status", None,
                                          _headers("b", TOKENS["b"]))
            assert status == 200 and time.monotonic() - t0 < 5.0
            assert json.loads(body)["accepted"] == 0
        finally:
            for s in slow:
                s.close()
        client.close()
        rss_end = _rss()
        after = server.call(lambda c: ({k: v.clone() for k, v in c.params.items()}, c.version))
    total = client.sent
    assert total >= 10_000, total
    assert after[1] == 0 and coord.metrics.accepted == 0
    assert all(torch.equal(after[0][k], v) for k, v in before.items())  # bitwise unchanged
    assert rss_end - rss_start[0] < 64 * 2**20, (rss_start, rss_end)
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {total} requests in {elapsed:.1f}s; updates {sum(updates_sent.values())} "
          f"by status {dict(sorted(updates_sent.items()))}; "
          f"all {dict(sorted(client.codes.items()))}; "
          f"rss growth {(rss_end - rss_start[0]) / 2**20:.1f} MiB")
    assert elapsed < 120.0
