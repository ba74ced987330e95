"""The fleet gateway: the only door from the nodes to the coordinator's SuperLink.

Flower 1.41's SuperLink serves its Fleet API (SuperNodes), its Control API (``flwr run``,
``flwr supernode register``: no authentication in the open-source build) and its Runtime API
(the ServerApp) on one HTTPS port. The coordinator therefore binds the SuperLink to loopback
only, where nothing but the coordinator's own processes reach it, and puts this gateway on
the address the nodes dial: it terminates TLS with the SuperLink's certificate and forwards
``POST /v1/fleet/...`` requests, and nothing else, to the loopback SuperLink (over TLS, the
CA checked). Any other path is answered 404 with a sentence, so the Control and Runtime APIs
cannot be reached from the network at all. SuperNode authentication is untouched: Flower signs
a timestamp header, which passes through, and the SuperLink checks it.

Run as ``python -m coordinator.fleetgate --listen HOST:PORT --upstream 127.0.0.1:PORT
--cert server.pem --key server.key --ca ca.pem`` (``coordinator.flower`` starts it).
"""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn

FLEET_PREFIX = "/v1/fleet/"
#: Hop-by-hop headers and those httpx recomputes.
_DROP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive",
         "content-encoding"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def make_app(upstream: str, ca_file: str, timeout: float = 60.0) -> Callable[..., Any]:
    """An ASGI app forwarding fleet requests to ``https://upstream``."""
    context = ssl.create_default_context(cafile=ca_file)
    client: httpx.AsyncClient | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal client
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if client is not None:
                await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] != "POST" or not path.startswith(FLEET_PREFIX) or ".." in path:
            await _answer(send, 404, {"detail": "only the Fleet API is served at this address; "
                                                "the Control API is on the coordinator's "
                                                "loopback"})
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        if client is None:
            client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=context,
                                       timeout=timeout)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in _DROP]
        try:
            reply = await client.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            await _answer(send, 502, {"detail": f"the SuperLink did not answer ({exc!s})"})
            return
        await send({"type": "http.response.start", "status": reply.status_code,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                                for k, v in reply.headers.items() if k.lower() not in _DROP]
                    + [(b"content-length", str(len(reply.content)).encode())]})
        await send({"type": "http.response.body", "body": reply.content})

    return app


async def _answer(send: Send, status: int, payload: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coordinator.fleetgate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the nodes dial")
    parser.add_argument("--upstream", required=True, help="the loopback SuperLink, HOST:PORT")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True, help="CA that signed the SuperLink's cert")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(make_app(args.upstream, args.ca), host=host.strip("[]"), port=int(port),
                ssl_certfile=args.cert, ssl_keyfile=args.key, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
