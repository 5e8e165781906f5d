"""Drives bitmask-imap with Python's imaplib, a client this project did not
write. Usage: imaplib_flow.py HOST PORT USER TOKEN (flow|state)

flow:  the acceptance conversation (login, list, create, select, 1,000
       appends with APPENDUID, fetch, search, store, copy, UID MOVE, expunge,
       IDLE told of another connection's APPEND, STARTTLS); prints the
       mailbox state as JSON on its last line.
state: prints the mailbox state (UIDVALIDITY and UIDs) as JSON.
"""

import imaplib
import json
import re
import ssl
import sys
import time

host, port, user, token, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


def check(condition, what):
    if not condition:
        print("FAIL:", what, flush=True)
        sys.exit(1)


def ok(result, what):
    typ, data = result
    check(typ == "OK", f"{what}: {typ} {data!r}")
    return data


def connect():
    imap = imaplib.IMAP4(host, port)
    ok(imap.login(user, token), "login")
    return imap


def state(imap):
    ok(imap.select("INBOX"), "select INBOX")
    validity = int(imap.response("UIDVALIDITY")[1][0])
    uids = [int(uid) for uid in ok(imap.uid("SEARCH", "ALL"), "uid search")[0].split()]
    work = ok(imap.select("Work"), "select Work")
    work_uids = [int(uid) for uid in ok(imap.uid("SEARCH", "ALL"), "uid search Work")[0].split()]
    return {"uidvalidity": validity, "uids": uids, "work": work_uids}


def message(n):
    return (
        f"From: Bob <bob@example.org>\r\nTo: {user}\r\nSubject: message {n}\r\n"
        f"Date: Mon, 2 Feb 2026 10:{n % 60:02d}:00 +0100\r\nMessage-ID: <{n}@example.org>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Body of message {n}. needle{n}x\r\n" + ("padding line\r\n" * (n % 7))
    ).encode()


def timed(what, started=[time.monotonic()]):
    now = time.monotonic()
    print(f"{what}: {now - started[0]:.2f}s", file=sys.stderr, flush=True)
    started[0] = now


def flow():
    imap = imaplib.IMAP4(host, port)
    capabilities = imap.capabilities
    for capability in ["IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "STARTTLS", "AUTH=PLAIN", "NAMESPACE", "UNSELECT"]:
        check(capability in capabilities, f"capability {capability} in {capabilities}")
    try:
        imap.login(user, "not the token")
        check(False, "a wrong token is refused")
    except imaplib.IMAP4.error as error:
        check("AUTHENTICATIONFAILED" in str(error) or "wrong" in str(error), f"refusal: {error}")
    ok(imap.login(user, token), "login after a failure")

    listed = ok(imap.list(), "list")
    text = b"\n".join(listed).decode()
    check('"INBOX"' in text or " INBOX" in text, f"INBOX listed: {text}")
    check("\\Sent" in text and "\\Trash" in text and "\\Drafts" in text and "\\Junk" in text, f"special use: {text}")
    ok(imap.create("Work"), "create Work")
    typ, _ = imap.create("Work")
    check(typ == "NO", "creating it twice is refused")
    ok(imap.subscribe("Work"), "subscribe")
    check(b"Work" in b"".join(ok(imap.lsub(), "lsub")), "lsub shows Work")

    data = ok(imap.select("INBOX"), "select")
    check(data[0] == b"0", f"empty INBOX: {data}")
    validity = int(imap.response("UIDVALIDITY")[1][0])
    appended = {}
    for n in range(1, 1001):
        raw = message(n)
        flags = "(\\Seen)" if n % 10 == 0 else None
        date = imaplib.Time2Internaldate(time.time() - (1000 - n) * 3600)
        typ, data = imap.append("INBOX", flags, date, raw)
        check(typ == "OK", f"append {n}: {data}")
        match = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
        check(match is not None, f"APPENDUID in {data}")
        check(int(match.group(1)) == validity and int(match.group(2)) == n, f"APPENDUID {data}")
        appended[n] = raw
    timed("1000 appends")
    data = ok(imap.select("INBOX"), "select again")
    check(data[0] == b"1000", f"1000 messages: {data}")

    # Fetch every flag set, header and body.
    flags = ok(imap.fetch("1:*", "(UID FLAGS)"), "fetch flags")
    check(len(flags) == 1000, f"1000 flag answers, got {len(flags)}")
    check(b"\\Seen" in flags[9] and b"\\Seen" not in flags[0], f"flags as appended: {flags[0]} {flags[9]}")
    headers = ok(imap.fetch("1:*", "(BODY.PEEK[HEADER] RFC822.SIZE)"), "fetch headers")
    bodies = ok(imap.uid("FETCH", "1:*", "(BODY.PEEK[])"), "fetch bodies")
    got = [item for item in bodies if isinstance(item, tuple)]
    check(len(got) == 1000, f"1000 bodies, got {len(got)}")
    for item in got:
        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
        check(item[1] == appended[uid], f"body of {uid} is byte-identical")
    timed("fetch flags, headers, bodies")
    check(b"Subject: message 1\r\n" in [item for item in headers if isinstance(item, tuple)][0][1], "header")
    envelope = ok(imap.fetch("3", "(ENVELOPE BODYSTRUCTURE INTERNALDATE)"), "envelope")
    check(b'"message 3"' in envelope[0] and b"bob" in envelope[0], f"envelope: {envelope}")
    partial = ok(imap.fetch("2", "(BODY.PEEK[TEXT]<0.7>)"), "partial")
    check(partial[0][1] == b"Body of", f"partial: {partial}")
    check(b"\\Seen" not in ok(imap.fetch("2", "(FLAGS)"), "peek")[0], "PEEK does not set \\Seen")
    ok(imap.fetch("2", "(BODY[TEXT])"), "read")
    check(b"\\Seen" in ok(imap.fetch("2", "(FLAGS)"), "seen")[0], "BODY[] sets \\Seen")

    # SEARCH: flags, headers, text, dates, sizes, sets.
    def search(*criteria):
        return [int(n) for n in ok(imap.search(None, *criteria), f"search {criteria}")[0].split()]

    check(search("SUBJECT", '"message 500"') == [500], "search subject")
    check(search("TEXT", "needle777x") == [777], "search text")
    check(search("BODY", "needle12x") == [12], "search body")
    check(len(search("FROM", "bob")) == 1000, "search from")
    check(len(search("SEEN")) == 101, f"search seen: {len(search('SEEN'))}")
    check(len(search("UNSEEN")) == 899, "search unseen")
    check(search("HEADER", "Message-ID", "<42@example.org>") == [42], "search header")
    check(search("1:3") == [1, 2, 3], "search sequence set")
    check(search("UID", "998:*") == [998, 999, 1000], "search uid set")
    check(search("NOT", "UID", "2:1000") == [1], "search not")
    check(search("OR", "SUBJECT", '"message 7"', "SUBJECT", '"message 8"')[:2] == [7, 8], "search or")
    check(len(search("SENTSINCE", "2-Feb-2026")) == 1000, "search sentsince")
    check(len(search("SENTBEFORE", "1-Feb-2026")) == 0, "search sentbefore")
    check(len(search("SINCE", "1-Jan-2000")) == 1000, "search since")
    large = search("LARGER", "300")
    check(0 < len(large) < 1000, f"search larger: {len(large)}")

    timed("searches")
    # STORE, COPY, UID MOVE, EXPUNGE.
    stored = ok(imap.store("1:5", "+FLAGS", "(\\Flagged $Important)"), "store")
    check(len(stored) == 5 and b"\\Flagged" in stored[0] and b"$Important" in stored[0], f"store answer {stored}")
    ok(imap.store("1:5", "-FLAGS.SILENT", "(\\Flagged)"), "silent store")
    check(search("FLAGGED") == [], "unflagged")
    check(len(search("KEYWORD", "$Important")) == 5, "keyword")
    typ, data = imap.copy("1:5", "Work")
    check(typ == "OK", f"copy {data}")
    check(re.search(rb"COPYUID \d+ 1:5 1:5", data[0]) is not None, f"COPYUID {data}")
    typ, data = imap.uid("MOVE", "6:8", "Work")
    check(typ == "OK", f"uid move {data}")
    check(len(search("ALL")) == 997, "moved out of INBOX")
    typ, data = imap.copy("1", "Nowhere")
    check(typ == "NO" and b"TRYCREATE" in b"".join(imap.untagged_responses.get("NO", [])) or typ == "NO", "copy to nowhere")
    ok(imap.store("1:2", "+FLAGS", "\\Deleted"), "delete")
    expunged = ok(imap.expunge(), "expunge")
    # imaplib keeps the MOVE's EXPUNGE answers (6, 6, 6) too.
    check(expunged == [b"6", b"6", b"6", b"1", b"1"], f"expunge answers {expunged}")
    check(len(search("ALL")) == 995, "expunged")
    ok(imap.select("Work"), "select Work")
    check(len(search("ALL")) == 8, "Work has 8")
    ok(imap.close(), "close")

    # IDLE: another connection's APPEND is announced.
    ok(imap.select("INBOX"), "select for idle")
    exists = int(imap.response("EXISTS")[1][-1])
    imap.send(b"I1 IDLE\r\n")
    line = imap.readline()
    check(line.startswith(b"+"), f"idle continuation: {line}")
    other = connect()
    started = time.monotonic()
    ok(other.append("INBOX", None, None, message(5000)), "append from another connection")
    line = imap.readline()
    elapsed = time.monotonic() - started
    check(line.strip() == f"* {exists + 1} EXISTS".encode(), f"EXISTS while idling: {line}")
    check(elapsed < 1.0, f"announced within a second: {elapsed}")
    imap.send(b"DONE\r\n")
    while True:
        line = imap.readline()
        if line.startswith(b"I1 "):
            check(line.startswith(b"I1 OK"), f"idle done: {line}")
            break
    other.logout()

    # Bad input: the session goes on.
    imaplib.Commands["FROBNICATE"] = ("AUTH", "SELECTED")

    def refused(*command):
        try:
            imap._simple_command(*command)
        except imaplib.IMAP4.error as error:
            return str(error)
        return "accepted"

    check("BAD" in refused("FROBNICATE"), "unknown command")
    check("BAD" in refused("FETCH", "99999", "(FLAGS)"), "bad sequence set")
    check("BAD" in refused("FETCH", "1:x", "(FLAGS)"), "malformed sequence set")
    try:
        imap.select("&Jjo")
        check(False, "invalid UTF-7 refused")
    except imaplib.IMAP4.error:
        pass
    ok(imap.noop(), "still alive")
    imap.logout()

    # STARTTLS with the account's local certificate.
    tls = imaplib.IMAP4(host, port)
    tls.starttls(ssl._create_unverified_context())
    ok(tls.login(user, token), "login over TLS")
    check("STARTTLS" not in tls.capabilities, "no STARTTLS inside TLS")
    tls.logout()

    imap = connect()
    print(json.dumps(state(imap)), flush=True)
    imap.logout()


if mode == "flow":
    flow()
else:
    imap = connect()
    print(json.dumps(state(imap)), flush=True)
    imap.logout()
