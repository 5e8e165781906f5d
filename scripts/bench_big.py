"""Big messages, timed, with the peak memory of every process on the way.

Phase 1, ours and the reference in the same run: imaplib APPENDs a message
of N MiB in all (a text part and random bytes attached, base64 as a mail
client sends it) and FETCHes BODY[] back, for each size; the seconds of
each and their ratio. The bytes read back are compared with the bytes
appended.

Phase 2, ours alone: the whole path from one person to another. smtplib
submits a message with N MiB attached while the recipient idles on INBOX;
the figure is the seconds from the start of the submission to the IDLE
EXISTS. Before each message the peak resident set (VmHWM) of every process
named by --process is reset to its current size (clear_refs, which needs
root or the processes' owner); after it arrives, the peak is read: each
process's idle RSS, its peak, and the peak above idle as a multiple of the
message size.

  --imap NAME,PORT,USER,PASSWORD         an IMAP server of phase 1 (twice:
                                         ours first, then the reference)
  --path SMTP_PORT,SENDER,SENDER_PASSWORD,IMAP_PORT,RECIPIENT,RECIPIENT_PASSWORD
  --process NAME=PID                     a process of phase 2 (repeated)
"""

import argparse
import imaplib
import random
import smtplib
import threading
import time
from email.message import EmailMessage

MIB = 1024 * 1024


def big_message(sender, recipient, subject, mib, seed, whole=False):
    """A message with `mib` MiB of random bytes attached or, with `whole`,
    a message of at most `mib` MiB in all (base64 and line ends counted)."""
    size = mib * MIB
    if whole:
        size = int((size - 4096) / (4 / 3 * 78 / 76))
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message.set_content("the file, as promised\n")
    data = random.Random(seed).randbytes(size)
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename="file.bin")
    return message


def imap_phase(servers, sizes):
    results = {}
    for server in servers:
        name, port, user, password = server.split(",")
        imap = imaplib.IMAP4("127.0.0.1", int(port), timeout=600)
        imap.login(user, password)
        mailbox = f"big-{time.time_ns()}"
        imap.create(mailbox)
        imap.select(mailbox)
        for mib in sizes:
            raw = big_message(user, user, f"{mib} MiB", mib, mib, whole=True).as_bytes().replace(b"\n", b"\r\n")
            start = time.perf_counter()
            typ, data = imap.append(mailbox, None, None, raw)
            appended = time.perf_counter() - start
            if typ != "OK":
                raise RuntimeError(f"{name}: APPEND of {mib} MiB: {data}")
            typ, data = imap.search(None, "ALL")
            last = data[0].split()[-1]
            start = time.perf_counter()
            typ, data = imap.fetch(last, "(BODY.PEEK[])")
            fetched = time.perf_counter() - start
            body = next(piece[1] for piece in data if isinstance(piece, tuple))
            if body != raw:
                raise RuntimeError(f"{name}: BODY[] of the {mib} MiB message differs from what was appended")
            results[(name, mib)] = (appended, fetched, len(raw))
        imap.logout()
    names = [server.split(",")[0] for server in servers]
    print("APPEND then FETCH BODY[] (imaplib, one connection), seconds:")
    header = f"{'message':>10} {'bytes':>10}"
    for name in names:
        header += f" {name + ' APPEND':>16} {name + ' FETCH':>15}"
    if len(names) == 2:
        header += f" {'APPEND ratio':>13} {'FETCH ratio':>12}"
    print(header)
    for mib in sizes:
        line = f"{mib:>6} MiB {results[(names[0], mib)][2]:>10}"
        for name in names:
            appended, fetched, _ = results[(name, mib)]
            line += f" {appended:>16.3f} {fetched:>15.3f}"
        if len(names) == 2:
            ours, reference = results[(names[0], mib)], results[(names[1], mib)]
            line += f" {ours[0] / reference[0]:>12.2f}x {ours[1] / reference[1]:>11.2f}x"
        print(line)
    print("(ratio: ours over the reference; below 1.00 is faster)")


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


def wait_for_exists(imap, count):
    while True:
        line = imap.readline()
        if not line:
            raise RuntimeError("the IMAP server closed the connection")
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"*" and parts[2] == b"EXISTS" and int(parts[1]) >= count:
            return time.perf_counter()


def path_phase(path, processes, sizes):
    smtp_port, sender, sender_password, imap_port, recipient, recipient_password = path.split(",")
    imap = imaplib.IMAP4("127.0.0.1", int(imap_port), timeout=900)
    imap.login(recipient, recipient_password)
    typ, data = imap.select("INBOX")
    count = int(data[0])
    rows = []
    for mib in sizes:
        message = big_message(sender, recipient, f"{mib} MiB on the whole path", mib, 1000 + mib)
        size = len(message.as_bytes())
        idle = {}
        for name, pid in processes:
            reset_peak(pid)
            idle[name] = rss_kib(pid, "VmRSS")
        imap.send(b"i IDLE\r\n")
        if not imap.readline().startswith(b"+"):
            raise RuntimeError("IDLE refused")
        start = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", int(smtp_port), timeout=900) as smtp:
            smtp.login(sender, sender_password)
            smtp.send_message(message)
        submitted = time.perf_counter() - start
        count += 1
        arrived = wait_for_exists(imap, count) - start
        imap.send(b"DONE\r\n")
        while not imap.readline().startswith(b"i "):
            pass
        # The gateway files the message before it announces it; the
        # processes behind it may still be settling (a sync of the new
        # documents): give them a moment before reading the peaks.
        time.sleep(2)
        peaks = {name: rss_kib(pid, "VmHWM") for name, pid in processes}
        rows.append((mib, size, submitted, arrived, idle, peaks))
    imap.logout()
    print()
    print("The whole path, smtplib -> IDLE EXISTS at the recipient, seconds (ours alone):")
    print(f"{'attached':>10} {'bytes sent':>11} {'submitted':>10} {'arrived':>9}")
    for mib, size, submitted, arrived, _, _ in rows:
        print(f"{mib:>6} MiB {size:>11} {submitted:>10.2f} {arrived:>9.2f}")
    print()
    print("Peak RSS of each process while each message went through, MiB (idle -> peak, (peak - idle) / message size):")
    header = f"{'process':>20}"
    for mib, *_ in rows:
        header += f" {str(mib) + ' MiB attached':>28}"
    print(header)
    worst = 0.0
    for name, _ in processes:
        line = f"{name:>20}"
        for _, size, _, _, idle, peaks in rows:
            factor = (peaks[name] - idle[name]) * 1024 / size
            worst = max(worst, factor)
            line += f" {idle[name] / 1024:>8.1f} -> {peaks[name] / 1024:>7.1f} ({factor:>5.2f}x)"
        print(line)
    print(f"largest peak above idle: {worst:.2f}x the message size (target: at most 3x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imap", action="append", default=[])
    parser.add_argument("--imap-sizes", default="1,10,40")
    parser.add_argument("--path")
    parser.add_argument("--path-sizes", default="1,10,25")
    parser.add_argument("--process", action="append", default=[])
    args = parser.parse_args()
    if args.imap:
        imap_phase(args.imap, [int(size) for size in args.imap_sizes.split(",")])
    if args.path:
        processes = [(entry.split("=")[0], int(entry.split("=")[1])) for entry in args.process]
        path_phase(args.path, processes, [int(size) for size in args.path_sizes.split(",")])


if __name__ == "__main__":
    main()
