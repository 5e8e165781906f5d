"""Appends every message of the MIME corpus with imaplib and fetches it back:
BODY[] byte-identical, RFC822.SIZE matching, BODYSTRUCTURE and ENVELOPE
served without an error. Usage: imaplib_corpus.py HOST PORT USER TOKEN DIR"""

import imaplib
import pathlib
import re
import sys

host, port, user, token, corpus = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
files = sorted(path for path in pathlib.Path(corpus).rglob("*.eml"))
if len(files) < 200:
    print(f"FAIL: only {len(files)} messages in {corpus}")
    sys.exit(1)

imap = imaplib.IMAP4(host, port)
imap.login(user, token)
typ, data = imap.create("Corpus")
imap.select("Corpus")


def append_binary(raw):
    """APPEND with a literal8 (RFC 3516): the only way NUL octets travel."""
    tag = imap._new_tag()
    imap.send(tag + b" APPEND Corpus ~{%d}\r\n" % len(raw))
    line = imap.readline()
    if not line.startswith(b"+"):
        return "BAD", [line]
    imap.send(raw + b"\r\n")
    while True:
        line = imap.readline()
        if line.startswith(tag + b" "):
            typ = line.split(b" ")[1].decode()
            return typ, [line[len(tag) + 1 + len(typ) + 1 :].strip()]


failures = []
for path in files:
    raw = path.read_bytes()
    binary = b"\x00" in raw
    if binary:
        typ, data = append_binary(raw)
    else:
        try:
            typ, data = imap.append("Corpus", None, None, raw)
        except imaplib.IMAP4.error as error:
            typ, data = "BAD", str(error)
        # imaplib turns bare LF line ends into CRLF before sending.
        raw = imaplib.MapCRLF.sub(imaplib.CRLF, raw)
    if typ != "OK":
        failures.append(f"{path}: APPEND {typ} {data}")
        continue
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    body = "BINARY.PEEK[]" if binary else "BODY.PEEK[]"
    typ, data = imap.uid("FETCH", uid, f"(RFC822.SIZE {body})")
    if typ != "OK" or not isinstance(data[0], tuple):
        failures.append(f"{path}: FETCH BODY[] {typ} {data!r:.200}")
        continue
    size = int(re.search(rb"RFC822\.SIZE (\d+)", data[0][0]).group(1))
    if data[0][1] != raw:
        failures.append(f"{path}: BODY[] differs ({len(data[0][1])} bytes back, {len(raw)} appended)")
    if size != len(raw):
        failures.append(f"{path}: RFC822.SIZE {size}, appended {len(raw)}")
    typ, data = imap.uid("FETCH", uid, "(BODYSTRUCTURE ENVELOPE BODY)")
    if typ != "OK" or b"BODYSTRUCTURE (" not in b"".join(
        part if isinstance(part, bytes) else b"".join(part) for part in data
    ):
        failures.append(f"{path}: BODYSTRUCTURE/ENVELOPE {typ} {data!r:.300}")
    typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[1] BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)] BODY.PEEK[TEXT])")
    if typ != "OK":
        failures.append(f"{path}: sections {typ} {data!r:.300}")
imap.logout()
for failure in failures:
    print("FAIL:", failure)
print(f"{len(files)} messages, {len(failures)} failures")
sys.exit(1 if failures else 0)
