"""Runs the HTTP test peers: a WebDAV server (wsgidav on cheroot, basic auth) or a plain
upload server (aiohttp: PUT, multipart POST, HEAD/GET/DELETE, bearer token)."""

from __future__ import annotations

import argparse
import errno
import os
import ssl
from pathlib import Path
from typing import Any

USER = "ecpds"


class _DiskFullAware:
    """wsgidav answers 500 for a full disk; real WebDAV servers answer 507."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def _guard(self, call: Any, *args: Any) -> Any:
        from wsgidav.dav_error import HTTP_INSUFFICIENT_STORAGE, DAVError

        try:
            return call(*args)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DAVError(HTTP_INSUFFICIENT_STORAGE) from exc
            raise

    def write(self, data: bytes) -> Any:
        return self._guard(self.out.write, data)

    def close(self) -> None:
        self._guard(self.out.close)


def webdav(args: argparse.Namespace) -> None:
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter
    from wsgidav.fs_dav_provider import FileResource
    from wsgidav.wsgidav_app import WsgiDAVApp

    begin_write = FileResource.begin_write
    FileResource.begin_write = lambda self, **kw: _DiskFullAware(begin_write(self, **kw))  # type: ignore[method-assign]

    app = WsgiDAVApp(
        {
            "provider_mapping": {"/": args.root},
            "simple_dc": {"user_mapping": {"*": {USER: {"password": args.secret}}}},
            "http_authenticator": {
                "accept_basic": True,
                "accept_digest": False,
                "default_to_digest": False,
            },
            "verbose": 1,
            "logging": {"enable": False},
            "property_manager": None,
            "lock_storage": True,
        }
    )
    server = wsgi.Server(("127.0.0.1", args.port), app, numthreads=8)
    if args.cert:
        server.ssl_adapter = BuiltinSSLAdapter(args.cert, args.key)
    server.start()


def upload(args: argparse.Namespace) -> None:
    from aiohttp import web

    root = Path(args.root)

    def local(path: str | Path) -> Path:
        """The file for a URL path (or a path under root), never outside root."""
        target = (root / str(path).lstrip("/")).resolve()
        if root.resolve() not in target.parents and target != root.resolve():
            raise web.HTTPForbidden()
        return target

    @web.middleware
    async def bearer(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.headers.get("Authorization") != f"Bearer {args.secret}":
            raise web.HTTPUnauthorized()
        try:
            return await handler(request)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise web.HTTPInsufficientStorage() from None
            raise

    async def put(request: web.Request) -> web.Response:
        path = local(request.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            async for chunk in request.content.iter_chunked(1 << 20):
                out.write(chunk)
        return web.Response(status=201)

    async def post(request: web.Request) -> web.Response:
        folder = local(request.path)
        reader = await request.multipart()
        async for part in reader:
            if part.name != "file" or not part.filename:  # type: ignore[union-attr]
                continue
            path = local((folder / part.filename).relative_to(root.resolve()))  # type: ignore[union-attr]
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                    out.write(chunk)
        return web.Response(status=201)

    async def get(request: web.Request) -> web.StreamResponse:
        path = local(request.path)
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def delete(request: web.Request) -> web.Response:
        path = local(request.path)
        if path.is_file():
            os.remove(path)
        return web.Response(status=204)

    app = web.Application(middlewares=[bearer], client_max_size=0)
    app.router.add_route("PUT", "/{tail:.*}", put)
    app.router.add_route("POST", "/{tail:.*}", post)
    app.router.add_route("GET", "/{tail:.*}", get)
    app.router.add_route("HEAD", "/{tail:.*}", get)
    app.router.add_route("DELETE", "/{tail:.*}", delete)
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=context, print=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["webdav", "upload"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--secret", required=True)  # the password (webdav) or the token
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    webdav(args) if args.mode == "webdav" else upload(args)


if __name__ == "__main__":
    main()
