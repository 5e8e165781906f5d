"""A test relay: aiosmtpd (a real SMTP server this project did not write)
saving every message it accepts as DIR/<n>.eml, with DIR/<n>.json holding
the envelope. Prints its port once it listens. Recipients whose local part
starts with "reject" get 550, "later" get 451.

Usage: relay.py DIR [--port N] [--tls CERT KEY [--client-ca CA]]
With --tls, STARTTLS is required; with --client-ca, so is a client
certificate signed by CA."""

import argparse
import asyncio
import itertools
import json
import pathlib
import socket
import ssl

from aiosmtpd.controller import Controller

arguments = argparse.ArgumentParser()
arguments.add_argument("dir")
arguments.add_argument("--port", type=int, default=0)
arguments.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
arguments.add_argument("--client-ca")
options = arguments.parse_args()
directory = pathlib.Path(options.dir)
directory.mkdir(parents=True, exist_ok=True)
counter = itertools.count(1)


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("reject"):
            return "550 5.1.1 no such user here"
        if local.startswith("later"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        n = next(counter)
        (directory / f"{n}.eml").write_bytes(envelope.original_content)
        # The envelope appears whole (renamed into place): readers take its
        # presence to mean the message is complete.
        partial = directory / f".{n}.json"
        partial.write_text(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos}))
        partial.rename(directory / f"{n}.json")
        return "250 2.0.0 queued as test-%d" % n


port = options.port
if port == 0:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
tls = {}
if options.tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*options.tls)
    if options.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(options.client_ca)
    tls = {"tls_context": context, "require_starttls": True}
controller = Controller(Handler(), hostname="127.0.0.1", port=port, data_size_limit=64 * 1024 * 1024, **tls)
controller.start()
print(port, flush=True)
try:
    asyncio.get_event_loop().run_until_complete(asyncio.Event().wait())
except KeyboardInterrupt:
    pass
finally:
    controller.stop()
