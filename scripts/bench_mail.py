"""Mail from one person to another through a whole path, timed: messages are
submitted one after another over one SMTP connection (smtplib, AUTH PLAIN)
while the recipient idles on INBOX (imaplib, IDLE); each EXISTS the
recipient is told about is one arrival. The k-th arrival is matched to the
k-th submission (delivery is in order on both paths), and the latency is
their difference. After them, messages are sent one at a time, each when
the one before has arrived: the latency of a single message on an idle
path. The same workload runs against our path and against the
reference, in the same run; the figures and their ratio are printed.

Each --side is NAME,SMTP_PORT,SENDER,SENDER_PASSWORD,IMAP_PORT,RECIPIENT,RECIPIENT_PASSWORD.
"""

import argparse
import imaplib
import smtplib
import statistics
import threading
import time


def parse_side(text):
    name, smtp_port, sender, sender_password, imap_port, recipient, recipient_password = text.split(",")
    return {
        "name": name,
        "smtp_port": int(smtp_port),
        "sender": sender,
        "sender_password": sender_password,
        "imap_port": int(imap_port),
        "recipient": recipient,
        "recipient_password": recipient_password,
    }


def idle(side, count, arrivals, ready, failed):
    try:
        imap = imaplib.IMAP4("127.0.0.1", side["imap_port"])
        imap.login(side["recipient"], side["recipient_password"])
        typ, data = imap.select("INBOX")
        base = int(data[0])
        imap.send(b"b1 IDLE\r\n")
        if not imap.readline().startswith(b"+"):
            raise RuntimeError("IDLE refused")
        ready.set()
        seen = base
        imap.sock.settimeout(600)
        while seen - base < count:
            line = imap.readline()
            if not line:
                raise RuntimeError("the IMAP server closed the connection")
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"*" and parts[2] == b"EXISTS":
                now = time.perf_counter()
                exists = int(parts[1])
                while seen < exists:
                    seen += 1
                    arrivals.append(now)
        imap.send(b"DONE\r\n")
        while not imap.readline().startswith(b"b1 "):
            pass
        imap.logout()
    except Exception as error:  # reported by the main thread
        failed.append(error)
        ready.set()


def message(side, n):
    return (
        f"From: {side['sender']}\r\nTo: {side['recipient']}\r\nSubject: benchmark message {n}\r\n"
        f"Message-ID: <bench-{n}-{time.time_ns()}@bench.example>\r\n\r\n"
        + "Ten kilobytes of text to carry from one person to another.\r\n" * 170
    ).encode()


def percentile(values, fraction):
    values = sorted(values)
    return values[max(0, int(len(values) * fraction) - 1)]


def run(side, count, paced):
    """`count` messages back to back (throughput, and latency under that
    load), then `paced` ones each sent when the one before has arrived
    (the latency of one message on an idle path)."""
    arrivals, ready, failed = [], threading.Event(), []
    idler = threading.Thread(target=idle, args=(side, count + paced, arrivals, ready, failed), daemon=True)
    idler.start()
    ready.wait(60)
    if failed:
        raise failed[0]
    smtp = smtplib.SMTP("127.0.0.1", side["smtp_port"])
    smtp.login(side["sender"], side["sender_password"])
    submitted = []
    for n in range(count):
        data = message(side, n)
        submitted.append(time.perf_counter())
        smtp.sendmail(side["sender"], [side["recipient"]], data)
    submit_seconds = time.perf_counter() - submitted[0]
    deadline = time.monotonic() + 600
    while len(arrivals) < count and not failed and time.monotonic() < deadline:
        time.sleep(0.001)
    loaded = sorted(arrived - sent for arrived, sent in zip(arrivals, submitted))
    total = arrivals[count - 1] - submitted[0] if len(arrivals) >= count else float("inf")
    single = []
    for n in range(count, count + paced):
        data = message(side, n)
        sent = time.perf_counter()
        smtp.sendmail(side["sender"], [side["recipient"]], data)
        while len(arrivals) <= n and not failed and time.monotonic() < deadline:
            time.sleep(0.0005)
        if len(arrivals) > n:
            single.append(arrivals[n] - sent)
    smtp.quit()
    idler.join(60)
    if failed:
        raise failed[0]
    if len(arrivals) < count + paced:
        raise RuntimeError(f"{side['name']}: {len(arrivals)} of {count + paced} messages arrived")
    return {
        "submitted per s": count / submit_seconds,
        "delivered per s": count / total,
        "loaded median ms": statistics.median(loaded) * 1000,
        "loaded p99 ms": percentile(loaded, 0.99) * 1000,
        "one-by-one median ms": statistics.median(single) * 1000,
        "one-by-one p99 ms": percentile(single, 0.99) * 1000,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ours", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=100)
    args = parser.parse_args()
    ours, reference = parse_side(args.ours), parse_side(args.reference)
    print(f"{args.count} messages of 10 KB submitted back to back, then {args.paced} one at a time; recipient idling")
    results = {}
    for side in (reference, ours):
        started = time.perf_counter()
        results[side["name"]] = run(side, args.count, args.paced)
        print(f"  {side['name']}: done in {time.perf_counter() - started:.1f} s", flush=True)
    print(f"{'':24} {ours['name']:>12} {reference['name']:>12} {'ratio':>8}")
    for key in results[ours["name"]]:
        a, b = results[ours["name"]][key], results[reference["name"]][key]
        print(f"{key:24} {a:12.1f} {b:12.1f} {a / b:8.2f}")


if __name__ == "__main__":
    main()
