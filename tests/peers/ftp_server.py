"""Runs pyftpdlib (FTP, or explicit-TLS FTPS with --cert) for the ftp test peer."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Any

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer


def _with_disk_full_reply(base: Any) -> Any:
    """pyftpdlib drops the errno of a failed file write; real servers answer 452."""

    class DTPHandler(base):  # type: ignore[misc,valid-type]
        def handle_error(self) -> None:
            exc = sys.exc_info()[1]
            cause = exc.__cause__ if isinstance(exc, _FileReadWriteError) else None
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                self._resp = ("452 No space left on device; transfer aborted.", logging.warning)
                self.close()
                return
            super().handle_error()

    return DTPHandler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--cert")
    args = parser.parse_args()
    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, args.password, args.root, perm="elradfmwMT")
    handler: type[FTPHandler] = FTPHandler
    if args.cert:
        handler = TLS_FTPHandler
        handler.certfile = args.cert
        handler.tls_control_required = True
        handler.tls_data_required = True
    handler.dtp_handler = _with_disk_full_reply(handler.dtp_handler)
    handler.authorizer = authorizer
    handler.banner = "ecpds test peer"
    handler.passive_ports = None
    handler.permit_foreign_addresses = True
    # Big socket buffers: the peer must not be what limits the measured throughput.
    handler.ac_in_buffer_size = 1 << 20
    handler.dtp_handler.ac_in_buffer_size = 1 << 20
    server = FTPServer(("127.0.0.1", args.port), handler)
    server.serve_forever(handle_exit=True)


if __name__ == "__main__":
    main()
