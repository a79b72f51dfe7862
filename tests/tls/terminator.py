#!/usr/bin/env python3
"""A TLS terminator for tests/tls_upload.rs (Python 3 standard library only).

Listens for HTTPS on 127.0.0.1 (an ephemeral port) with the given
certificate chain and key, and pipes each connection's plaintext to a TCP
upstream (the in-process Pyroscope test double). Prints `PORT <n>` on
stdout once listening, reports failed handshakes on stderr, and exits when
its stdin closes (so it never outlives the test that started it).

    terminator.py CERT_PEM KEY_PEM UPSTREAM_HOST:UPSTREAM_PORT
"""

import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, ssl.SSLError, OSError):
            pass


def main():
    cert, key, upstream = sys.argv[1:4]
    host, port = upstream.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError as e:
            print(f"upstream unreachable: {e}", file=sys.stderr, flush=True)
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, up_writer), pipe(up_reader, client_writer)
        )

    def on_error(loop, ctx):
        # Failed handshakes (the client rejected our certificate) land here.
        print(f"tls: {ctx.get('message')}: {ctx.get('exception')}", file=sys.stderr, flush=True)

    async def serve():
        asyncio.get_running_loop().set_exception_handler(on_error)
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        # Until the parent closes our stdin (or dies).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
