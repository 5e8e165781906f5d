"""The IMAP benchmark's client: the same workload against bitmask's gateway
and Dovecot, with Python's imaplib (and mbsync) as the client of both.
Run by scripts/bench-imap, which starts both servers."""

import argparse
import imaplib
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import tempfile
import time


def parse_server(text):
    name, host, port, user, password, pids = text.split(",", 5)
    return {"name": name, "host": host, "port": int(port), "user": user, "password": password, "pids": pids}


def connect(server):
    imap = imaplib.IMAP4(server["host"], server["port"])
    imap.login(server["user"], server["password"])
    return imap


def message(n, size=0):
    body = f"Body of message {n}.\r\n" + ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * size)
    return (
        f"From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: benchmark message {n}\r\n"
        f"Date: Mon, 2 Feb 2026 10:00:00 +0100\r\nMessage-ID: <{n}@bench.example.org>\r\n"
        f"Content-Type: text/plain\r\n\r\n{body}"
    ).encode()


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def append_many(server, mailbox, count, start=0, size=3):
    imap = connect(server)
    for n in range(start, start + count):
        typ, _ = imap.append(mailbox, None, None, message(n, size))
        assert typ == "OK"
    imap.logout()


def mbsync(server, count):
    directory = tempfile.mkdtemp(prefix="bench-mbsync-")
    try:
        os.makedirs(os.path.join(directory, "mail"))
        config = os.path.join(directory, "mbsyncrc")
        with open(config, "w") as file:
            file.write(
                f"IMAPAccount bench\nHost {server['host']}\nPort {server['port']}\nUser {server['user']}\n"
                f"Pass {server['password']}\nSSLType None\nAuthMechs LOGIN PLAIN\n\n"
                "IMAPStore far\nAccount bench\n\n"
                f"MaildirStore near\nPath {directory}/mail/\nInbox {directory}/mail/INBOX\nSubFolders Verbatim\n\n"
                "Channel bench\nFar :far:\nNear :near:\nPatterns Bench\nCreate Near\nSyncState *\n"
            )
        elapsed, result = timed(
            lambda: subprocess.run(["mbsync", "-q", "-c", config, "bench"], capture_output=True, text=True)
        )
        assert result.returncode == 0, result.stderr
        files = sum(len(names) for _, _, names in os.walk(os.path.join(directory, "mail", "Bench")))
        assert files >= count, f"mbsync fetched {files} files"
        return elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def client_load(args):
    server, seconds, seed = args
    rng = random.Random(seed)
    imap = connect(server)
    typ, data = imap.select("Bench")
    # Only the first messages: the ones appended meanwhile come and go.
    count = min(int(data[0]), 1000)
    commands = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        n = rng.randint(1, count)
        imap.fetch(str(n), "(FLAGS BODY.PEEK[HEADER])")
        imap.store(str(n), "+FLAGS.SILENT", "(\\Flagged)")
        imap.store(str(n), "-FLAGS.SILENT", "(\\Flagged)")
        commands += 3
        if rng.random() < 0.1:
            typ, data = imap.append("Bench", None, None, message(rng.randint(0, 1 << 30)))
            uid = re.search(rb"APPENDUID \d+ (\d+)", data[0])
            if uid:
                imap.uid("STORE", uid.group(1).decode(), "+FLAGS.SILENT", "(\\Deleted)")
                imap.uid("EXPUNGE", uid.group(1).decode()) if "UIDPLUS" in imap.capabilities else imap.expunge()
                commands += 3
            else:
                commands += 1
        imap.noop()
        commands += 1
    imap.logout()
    return commands


def fill_maildir(folder, count):
    import pwd

    owner = pwd.getpwnam("dovecot")
    os.makedirs(os.path.join(folder, "cur"), exist_ok=True)
    for n in range(count):
        path = os.path.join(folder, "cur", f"1770000000.M{n}P1.bench,S={len(message(n, 0))}:2,")
        with open(path, "wb") as file:
            file.write(message(n, 0))
        os.chown(path, owner.pw_uid, owner.pw_gid)
    for directory in (folder, os.path.join(folder, "cur")):
        os.chown(directory, owner.pw_uid, owner.pw_gid)


def peak_memory_kib(pids):
    total = 0
    for pid in pids.split():
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def pids_of(server):
    # A command that prints the pids whose memory counts (Dovecot forks an imap process per login).
    return subprocess.run(["sh", "-c", server["pids"]], capture_output=True, text=True).stdout


def run(server, args):
    figures = {}
    imap = connect(server)
    imap.create("Bench")
    imap.logout()
    figures["append 1,000 messages (s)"], _ = timed(lambda: append_many(server, "Bench", args.messages))

    imap = connect(server)
    imap.select("Bench")
    flags, _ = timed(lambda: [imap.fetch("1:*", "(FLAGS)") for _ in range(10)])
    figures["FETCH 1:* FLAGS (s)"] = flags / 10
    figures["FETCH 1:* BODY.PEEK[] (s)"], _ = timed(lambda: imap.fetch("1:*", "(BODY.PEEK[])"))
    searched, result = timed(
        lambda: [imap.search(None, "HEADER", "Message-ID", f"<{n}@bench.example.org>") for n in range(0, 1000, 100)]
    )
    assert result[0][1][0] == b"1", result[0]
    figures["SEARCH HEADER Message-ID (s)"] = searched / 10
    imap.logout()

    figures["mbsync full sync of 1,000 (s)"] = mbsync(server, args.messages)

    with multiprocessing.Pool(args.clients) as pool:
        counts = pool.map(client_load, [(server, args.seconds, seed) for seed in range(args.clients)])
    figures[f"{args.clients} clients: commands/s"] = sum(counts) / args.seconds

    if args.big:
        imap = connect(server)
        imap.create("Big")
        imap.logout()
        per = args.big // 10
        if server.get("maildir"):
            # Dovecot's APPEND slows down as a Maildir grows (its uidlist is
            # rewritten each time), so its big mailbox is written as files;
            # the SELECT below (not timed) indexes them.
            fill_maildir(os.path.join(server["maildir"], ".Big"), args.big)
        else:
            with multiprocessing.Pool(10) as pool:
                pool.starmap(append_many, [(server, "Big", per, i * per, 0) for i in range(10)])
        imap = connect(server)
        imap.select("Big")
        figures[f"UID FETCH 1:* FLAGS on {args.big} (s)"], result = timed(lambda: imap.uid("FETCH", "1:*", "(FLAGS)"))
        assert len(result[1]) >= args.big, len(result[1])
        figures[f"peak RSS with {args.big} messages (MiB)"] = peak_memory_kib(pids_of(server)) / 1024
        for pid in pids_of(server).split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    name = os.path.basename(file.read().split(b"\0")[0].decode())
            except FileNotFoundError:
                continue
            print(f"  {server['name']}: {name} (pid {pid}) peak RSS {peak_memory_kib(pid) / 1024:.1f} MiB", flush=True)
        imap.logout()
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ours", required=True, help="name,host,port,user,password,pid-command")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--big", type=int, default=0)
    parser.add_argument("--reference-maildir", help="the reference's Maildir, to fill the big mailbox directly")
    args = parser.parse_args()
    ours, reference = parse_server(args.ours), parse_server(args.reference)
    reference["maildir"] = args.reference_maildir
    results = {}
    for server in (ours, reference):
        results[server["name"]] = run(server, args)
    print(f"{'workload':44} {ours['name']:>12} {reference['name']:>12} {'ratio':>8}")
    for key in results[ours["name"]]:
        a, b = results[ours["name"]][key], results[reference["name"]][key]
        ratio = a / b if b else float("nan")
        print(f"{key:44} {a:12.3f} {b:12.3f} {ratio:8.2f}")
    print("(times: lower is better; commands/s: higher is better; ratio = ours / reference)")


if __name__ == "__main__":
    main()
