"""An IDLE client (Python's imaplib, which this project did not write) that
waits to be told of new mail in INBOX.

Usage: incoming_idle.py HOST PORT USER TOKEN

Selects INBOX, starts IDLE and prints "idling". Then reads one line from
standard input (the test writes it once the incoming item is in the store),
waits for an untagged EXISTS above the count SELECT gave (at most 10 s),
ends IDLE and prints {"exists": N, "seconds": S} as JSON, S being the time
from that line to the EXISTS.
"""

import imaplib
import json
import socket
import sys
import time

host, port, user, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

imap = imaplib.IMAP4(host, port)
typ, _ = imap.login(user, token)
assert typ == "OK", typ
typ, data = imap.select("INBOX")
assert typ == "OK", (typ, data)
before = int(data[0])

tag = imap._new_tag().decode()
imap.send(f"{tag} IDLE\r\n".encode())
line = imap.readline()
assert line.startswith(b"+"), line
print("idling", flush=True)

sys.stdin.readline()
started = time.monotonic()
imap.sock.settimeout(10)
exists = None
try:
    while exists is None:
        line = imap.readline()
        if not line:
            break
        words = line.split()
        if len(words) == 3 and words[0] == b"*" and words[2].upper() == b"EXISTS" and int(words[1]) > before:
            exists = int(words[1])
except socket.timeout:
    pass
elapsed = time.monotonic() - started
imap.sock.settimeout(None)
imap.send(b"DONE\r\n")
while True:
    line = imap.readline()
    if not line or line.startswith(tag.encode()):
        break
imap.logout()
print(json.dumps({"exists": exists, "seconds": elapsed}), flush=True)
