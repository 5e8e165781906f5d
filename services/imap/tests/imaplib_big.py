"""Big messages through the IMAP gateway with imaplib: random binary
attachments of the sizes given (MiB, the whole message at most that), one
message with 200 attachments of 100 KiB, one with a 30 MiB inline text part.
Each is appended (synchronizing literal, or LITERAL+ for every other one) and
read back: BODY[] byte for byte, BODY[2] and BINARY[2] of the attachment,
BODYSTRUCTURE, a partial fetch. Over the 40 MiB limit an APPEND is refused
with [TOOBIG] and leaves nothing behind.

Usage: imaplib_big.py HOST PORT USER TOKEN STATE_FILE append SIZE...
       imaplib_big.py HOST PORT USER TOKEN STATE_FILE check
`append` writes the SHA-256 of each message to STATE_FILE; `check` (after a
restart) fetches them all again and compares. Prints the seed it used."""

import base64
import hashlib
import imaplib
import json
import os
import random
import re
import sys
import time

LIMIT = 40 * 1024 * 1024
host, port, user, token, state_file, mode = sys.argv[1:7]
port = int(port)
seed = int(os.environ.get("BIG_SEED", random.randrange(1 << 30)))
print(f"seed {seed}", flush=True)
rng = random.Random(seed)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def base64_lines(data):
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"


def with_attachments(subject, attachments, text=b"see attached\r\n"):
    parts = [b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text]
    for index, data in enumerate(attachments):
        parts.append(
            b"Content-Type: application/octet-stream; name=\"a%d.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"a%d.bin\"\r\n\r\n" % (index, index) + base64_lines(data)
        )
    head = (
        b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + str(rng.random()).encode() + b"@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b-b-b\"\r\n\r\n"
    )
    body = b"".join(b"--b-b-b\r\n" + part for part in parts) + b"--b-b-b--\r\n"
    return head + body


def attachment_for(total):
    """Random bytes whose message is at most `total` bytes."""
    size = max(0, (total - 1024) * 57 // 78)
    return rng.randbytes(size)


def connect():
    imap = imaplib.IMAP4(host, port)
    imap.login(user, token)
    return imap


def append(imap, raw, literal_plus):
    """APPEND to INBOX; the tagged answer line."""
    tag = imap._new_tag()
    if literal_plus:
        imap.send(tag + b" APPEND INBOX {%d+}\r\n" % len(raw) + raw + b"\r\n")
    else:
        imap.send(tag + b" APPEND INBOX {%d}\r\n" % len(raw))
        line = imap.readline()
        if not line.startswith(b"+"):
            return line
        imap.send(raw + b"\r\n")
    while True:
        line = imap.readline()
        if line.startswith(tag + b" "):
            return line


def fetch(imap, uid, item):
    typ, data = imap.uid("FETCH", str(uid), f"({item})")
    assert typ == "OK", (typ, data)
    pieces = [piece for piece in data if isinstance(piece, tuple)]
    return pieces, data


def check(imap, uid, expected):
    pieces, _ = fetch(imap, uid, "BODY.PEEK[]")
    assert len(pieces) == 1 and sha(pieces[0][1]) == expected["sha"], f"BODY[] of {uid} differs"
    if expected.get("attachment"):
        pieces, _ = fetch(imap, uid, "BODY.PEEK[2]")
        decoded = base64.b64decode(pieces[0][1])
        assert sha(decoded) == expected["attachment"], f"BODY[2] of {uid} differs"
        pieces, _ = fetch(imap, uid, "BINARY.PEEK[2]")
        assert sha(pieces[0][1]) == expected["attachment"], f"BINARY[2] of {uid} differs"
        _, data = fetch(imap, uid, "BODYSTRUCTURE")
        structure = b" ".join(piece if isinstance(piece, bytes) else piece[0] for piece in data)
        assert b'"application" "octet-stream"' in structure.lower(), structure[:400]
    for item, digest in expected["partials"].items():
        pieces, _ = fetch(imap, uid, f"BODY.PEEK[]<{item}>")
        assert sha(pieces[0][1]) == digest, f"BODY[]<{item}> of {uid} differs ({len(pieces[0][1])} bytes)"


def partials(raw):
    """Partial fetches and the SHA-256 of what each must give: inside, across
    the parts a big message is kept in, past the end."""
    size = len(raw)
    ranges = [(1000, 500), (0, 1), (size // 2 - 70000, 200000), (size - 10, 100), (size + 5, 10)]
    return {f"{origin}.{length}": sha(raw[origin:origin + length]) for origin, length in ranges}


imap = connect()
imap.select("INBOX")
if mode == "append":
    state = {}
    messages = []
    for mib in sys.argv[7:]:
        data = attachment_for(int(mib) * 1024 * 1024)
        raw = with_attachments(f"{mib} MiB", [data])
        assert len(raw) <= LIMIT, len(raw)
        messages.append((f"{mib} MiB", raw, sha(data)))
    many = [rng.randbytes(100 * 1024) for _ in range(200)]
    messages.append(("200 attachments", with_attachments("200 attachments", many), sha(many[0])))
    text = b"".join(b"line %08d of a long inline text, to be read whole\r\n" % n for n in range(30 * 1024 * 1024 // 52))
    messages.append(("30 MiB text", with_attachments("30 MiB text", [], text=text), None))
    for index, (name, raw, attachment) in enumerate(messages):
        started = time.monotonic()
        answer = append(imap, raw, literal_plus=index % 2 == 1)
        appended = time.monotonic() - started
        match = re.search(rb"APPENDUID \d+ (\d+)", answer)
        assert answer.split()[1] == b"OK" and match, f"APPEND of {name} ({len(raw)} bytes): {answer!r}"
        uid = int(match.group(1))
        state[str(uid)] = {"name": name, "sha": sha(raw), "size": len(raw), "attachment": attachment,
                           "partials": partials(raw)}
        check(imap, uid, state[str(uid)])
        print(f"{name}: {len(raw)} bytes appended in {appended:.1f} s, read back in {time.monotonic() - started - appended:.1f} s", flush=True)
    # All of them in one FETCH, read whole (RFC822 marks them \Seen).
    typ, data = imap.uid("FETCH", "1:*", "(RFC822)")
    bodies = [piece[1] for piece in data if isinstance(piece, tuple)]
    assert typ == "OK" and sorted(map(sha, bodies)) == sorted(m["sha"] for m in state.values()), "FETCH 1:* RFC822"
    # Over the limit: refused, and nothing is left behind.
    typ, before = imap.uid("SEARCH", "ALL")
    over = with_attachments("too big", [attachment_for(LIMIT + 1024 * 1024)])
    answer = append(imap, over, literal_plus=False)
    assert b"TOOBIG" in answer or answer.split()[1] in (b"NO", b"BAD"), answer
    typ, after = imap.uid("SEARCH", "ALL")
    assert before == after, (before, after)
    print(f"over the limit ({len(over)} bytes): {answer.decode().strip()}", flush=True)
    with open(state_file, "w") as file:
        json.dump(state, file)
else:
    with open(state_file) as file:
        state = json.load(file)
    for uid, expected in state.items():
        check(imap, int(uid), expected)
        print(f"{expected['name']}: read back after the restart", flush=True)
imap.logout()
print(json.dumps({"ok": len(state)}))
