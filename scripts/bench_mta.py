"""The reference path's MTA, standing in for Postfix between Dovecot's
submission service (which relays to an MTA) and Dovecot's LMTP delivery:
aiosmtpd takes each relayed message and hands it to LMTP over one kept
connection before it answers 250, as an MTA delivering at once would.

Usage: bench_mta.py LISTEN_PORT LMTP_PORT (prints "ready" when listening).
"""

import smtplib
import sys
import time

from aiosmtpd.controller import Controller


class Deliver:
    def __init__(self, lmtp_port):
        self.lmtp_port = lmtp_port
        self.lmtp = None

    async def handle_DATA(self, server, session, envelope):
        for attempt in range(2):
            try:
                if self.lmtp is None:
                    self.lmtp = smtplib.LMTP("127.0.0.1", self.lmtp_port)
                self.lmtp.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
                return "250 2.0.0 delivered"
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                self.lmtp = None
        return "451 4.3.0 LMTP delivery failed"


def main():
    listen_port, lmtp_port = int(sys.argv[1]), int(sys.argv[2])
    controller = Controller(Deliver(lmtp_port), hostname="127.0.0.1", port=listen_port)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
