"""The SMTP benchmark's client: the same messages submitted with Python's
smtplib to bitmask's gateway (which queues them, then encrypts+signs and
relays them) and straight to the relay (aiosmtpd), the reference.
Run by scripts/bench-smtp, which starts bitmaskd and the relay."""

import argparse
import base64
import json
import os
import random
import smtplib
import subprocess
import sys
import time

SENDER = "alice@example.org"
RECIPIENT = "bob@example.org"
SERVICES = ("smtp", "keys", "store")
WORDS = (
    "the of and to in is that for it as with was on be by at this are from or have an they which one had "
    "not but what all were when we there can your more if out so said time about other into than then them "
    "key mail message relay queue encrypt sign gateway account benchmark plans meeting noon tomorrow report"
).split()


def host_port(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def small_message(n, size, rng):
    """About `size` bytes of plain text mail to Bob."""
    header = (
        f"From: Alice <{SENDER}>\r\nTo: Bob <{RECIPIENT}>\r\nSubject: benchmark message {n}\r\n"
        f"Date: Mon, 2 Feb 2026 10:00:00 +0100\r\nMessage-ID: <{n}.{rng.random()}@bench.example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    lines = [f"Body of message {n}.".encode()]
    length = len(header) + len(lines[0]) + 2
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(12)).encode()[: max(1, size - length - 2)]
        lines.append(line)
        length += len(line) + 2
    return header + b"\r\n".join(lines) + b"\r\n"


def big_message(attachment_bytes):
    """A multipart/mixed message with a text part and `attachment_bytes` of random data, base64."""
    boundary = "bench-" + os.urandom(8).hex()
    encoded = base64.encodebytes(os.urandom(attachment_bytes)).replace(b"\n", b"\r\n")
    head = (
        f"From: Alice <{SENDER}>\r\nTo: Bob <{RECIPIENT}>\r\nSubject: benchmark attachment\r\n"
        f"Date: Mon, 2 Feb 2026 10:00:00 +0100\r\nMessage-ID: <big.{os.urandom(4).hex()}@bench.example.org>\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe data is attached.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="data.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    ).encode()
    return head + encoded + f"\r\n--{boundary}--\r\n".encode()


class Relay:
    """What the relay has received: relay.py numbers the messages 1, 2, ... and
    writes <n>.json after <n>.eml, one message at a time (its handler never
    awaits), so <n>.json existing means n messages have arrived."""

    def __init__(self, directory):
        self.directory = directory
        self.known = 0

    def count(self):
        while os.path.exists(os.path.join(self.directory, f"{self.known + 1}.json")):
            self.known += 1
        return self.known

    def wait(self, count, timeout, log):
        """Waits until `count` messages have arrived; returns the time it returned, or None on a timeout."""
        deadline = time.monotonic() + timeout
        while self.count() < count:
            if time.monotonic() > deadline:
                print(f"WARNING: the relay has {self.known} of {count} messages after {timeout} s", file=sys.stderr)
                tail(log)
                return None
            time.sleep(0.002)
        return time.perf_counter()

    def envelope(self, n):
        with open(os.path.join(self.directory, f"{n}.json")) as file:
            return json.load(file)

    def head(self, n):
        with open(os.path.join(self.directory, f"{n}.eml"), "rb") as file:
            data = file.read(65536)
        return data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]


def tail(log, lines=20):
    try:
        with open(log, errors="replace") as file:
            text = file.readlines()[-lines:]
    except OSError as error:
        text = [f"({error})\n"]
    print(f"--- the last lines of {log}:", file=sys.stderr)
    sys.stderr.writelines(text)
    print("---", file=sys.stderr)


def connect(address, user=None, password=None):
    smtp = smtplib.SMTP(*address, timeout=600)
    smtp.ehlo()
    if user:
        smtp.login(user, password)
    return smtp


def send(smtp, messages):
    for message in messages:
        refused = smtp.sendmail(SENDER, [RECIPIENT], message)
        assert refused == {}, refused


def services(home):
    """{service: pid} of this stack's bitmask-smtp, -keys and -store (found by
    their --home: other stacks may run on the machine)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = [arg.decode(errors="replace") for arg in file.read().split(b"\0") if arg]
        except OSError:
            continue
        if not argv or "--home" not in argv or argv[argv.index("--home") + 1 :][:1] != [home]:
            continue
        name = os.path.basename(argv[0])
        for service in SERVICES:
            if name == f"bitmask-{service}":
                found[service] = int(entry)
    return found


def memory_kib(pid):
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split()[:2]
                values[key.rstrip(":")] = int(value)
    return values


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux: clear_refs 5); whether it worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        return False
    values = memory_kib(pid)
    return values["VmHWM"] <= values["VmRSS"] + 64


def queue(args):
    """The gateway's queue (ListQueue over its gRPC socket), or None if it cannot be read."""
    result = subprocess.run(
        [args.grpcurl, "-plaintext", "-unix", "-authority", "localhost", "-max-time", "10",
         args.queue_socket, "bitmask.smtp.v1.Smtp/ListQueue"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        return None
    return json.loads(result.stdout or "{}").get("entries", [])


def wait_queue_empty(args, timeout):
    """Waits until the gateway has removed what it relayed; returns the entries left on a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        entries = queue(args)
        if entries is None or not entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def report_queue(args, when):
    entries = wait_queue_empty(args, 30)
    if entries is None:
        print(f"WARNING: the gateway's queue could not be listed {when}", file=sys.stderr)
    elif entries:
        print(f"WARNING: {len(entries)} message(s) still in the gateway's queue {when}:", file=sys.stderr)
        for entry in entries[:5]:
            print(f"  {entry.get('subject')!r} state={entry.get('state')} attempts={entry.get('attempts')} "
                  f"last_error={entry.get('lastError', '')!r}", file=sys.stderr)
        return False
    return True


def rate(count, started, ended):
    return count / (ended - started) if ended else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True, help="HOST:PORT of bitmask's SMTP gateway")
    parser.add_argument("--user", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--relay", required=True, help="HOST:PORT of the relay (aiosmtpd)")
    parser.add_argument("--relay-dir", required=True, help="where the relay saves what it receives")
    parser.add_argument("--home", required=True, help="BITMASK_HOME of the stack, to find its processes")
    parser.add_argument("--queue-socket", required=True, help="the SMTP service's gRPC socket")
    parser.add_argument("--grpcurl", required=True)
    parser.add_argument("--log", required=True, help="the gateway's log, shown when messages do not arrive")
    parser.add_argument("--count", type=int, default=200, help="messages of the throughput test")
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message of the throughput test")
    parser.add_argument("--attachment-mb", type=float, default=25, help="attachment of the big message, MB (10^6)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the relay, per test")
    args = parser.parse_args()
    gateway, relay_address = host_port(args.gateway), host_port(args.relay)
    relay = Relay(args.relay_dir)
    ok = True
    ours_numbers = []  # the relay's numbers of the copies the gateway relayed
    rng = random.Random(1)

    # Warm-up (not timed): one message each way, so that connections, key
    # look-ups and caches are set up before the clock runs.
    base = relay.count()
    smtp = connect(gateway, args.user, args.token)
    send(smtp, [small_message(-1, args.size, rng)])
    smtp.quit()
    if relay.wait(base + 1, args.timeout, args.log) is None:
        sys.exit("the warm-up message never reached the relay")
    ours_numbers.append(base + 1)
    smtp = connect(relay_address)
    send(smtp, [small_message(-2, args.size, rng)])
    smtp.quit()
    relay.wait(base + 2, args.timeout, args.log)
    ok &= report_queue(args, "after the warm-up")

    # 1. Throughput: N messages on one connection, then until the relay has them all.
    figures = []
    messages = [small_message(n, args.size, rng) for n in range(args.count)]
    size_text = f"{args.size / 1024:g} KB"
    results = {}
    for name, address, login in (("ours", gateway, (args.user, args.token)), ("reference", relay_address, ())):
        smtp = connect(address, *login)
        base = relay.count()
        started = time.perf_counter()
        send(smtp, messages)
        submitted = time.perf_counter()
        relayed = relay.wait(base + args.count, args.timeout, args.log)
        smtp.quit()
        if relayed is None:
            ok = False
        if name == "ours":
            ours_numbers.extend(range(base + 1, relay.count() + 1))
            ok &= report_queue(args, f"after the {args.count} messages")
        results[name] = (rate(args.count, started, submitted), rate(args.count, started, relayed))
    figures.append((f"{args.count} x {size_text}: submitted (msgs/s)", results["ours"][0], results["reference"][0]))
    figures.append((f"{args.count} x {size_text}: submitted+relayed (msgs/s)", results["ours"][1], results["reference"][1]))

    # 2. One message with a big attachment: time, and the peak RSS of the services.
    big = big_message(int(args.attachment_mb * 1_000_000))
    label = f"{args.attachment_mb:g} MB attachment"
    pids = services(args.home)
    missing = [service for service in SERVICES if service not in pids]
    if missing:
        print(f"WARNING: no process found for bitmask-{', bitmask-'.join(missing)}", file=sys.stderr)
    before = {service: memory_kib(pid) for service, pid in pids.items()}
    reset = {service: reset_peak(pid) for service, pid in pids.items()}
    times = {}
    for name, address, login in (("ours", gateway, (args.user, args.token)), ("reference", relay_address, ())):
        smtp = connect(address, *login)
        base = relay.count()
        started = time.perf_counter()
        send(smtp, [big])
        submitted = time.perf_counter()
        relayed = relay.wait(base + 1, args.timeout, args.log)
        smtp.quit()
        if relayed is None:
            ok = False
        if name == "ours":
            ours_numbers.extend(range(base + 1, relay.count() + 1))
            # The worker still saves and removes the entry after the relay took it.
            ok &= report_queue(args, "after the big message")
            after_pids = services(args.home)
            after = {service: memory_kib(pid) for service, pid in after_pids.items()}
            restarted = [service for service in pids if after_pids.get(service) != pids[service]]
            if restarted:
                print(f"WARNING: restarted during the big message: bitmask-{', bitmask-'.join(restarted)}",
                      file=sys.stderr)
                ok = False
        times[name] = (submitted - started, (relayed - started) if relayed else float("nan"))
    figures.append((f"{label}: submitted (s)", times["ours"][0], times["reference"][0]))
    figures.append((f"{label}: submitted+relayed (s)", times["ours"][1], times["reference"][1]))
    size_mib = len(big) / (1 << 20)
    total = 0
    memory_lines = []
    for service in SERVICES:
        if service not in pids or service not in after or after_pids.get(service) != pids[service]:
            continue
        peak = after[service]["VmHWM"] / 1024
        total += peak
        figures.append((f"bitmask-{service} peak RSS / message (MiB)", peak, size_mib))
        how = "reset by clear_refs before" if reset[service] else "NOT reset: peak over the process lifetime"
        memory_lines.append(
            f"  bitmask-{service:5} pid {pids[service]}: before VmRSS {before[service]['VmRSS'] / 1024:.1f} MiB, "
            f"VmHWM {before[service]['VmHWM'] / 1024:.1f} MiB; after VmHWM {peak:.1f} MiB ({how})"
        )
    if memory_lines:
        figures.append(("sum of the three peaks / message (MiB)", total, size_mib))

    # The relayed copies: all to Bob, all multipart/encrypted.
    encrypted = 0
    for n in ours_numbers:
        head = relay.head(n).lower()
        to = relay.envelope(n)["to"]
        if b"content-type: multipart/encrypted" in head.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ") and to == [RECIPIENT]:
            encrypted += 1
    expected = 1 + args.count + 1

    print(f"{'workload':46} {'bitmask':>12} {'reference':>12} {'ratio':>8}")
    for key, a, b in figures:
        ratio = a / b if b else float("nan")
        print(f"{key:46} {a:12.3f} {b:12.3f} {ratio:8.2f}")
    print("(reference: smtplib straight to the relay; for peak RSS the message's size;"
          " ratio = bitmask / reference; msgs/s: higher is better, s and MiB: lower)")
    print(f"big message: {len(big) / 1e6:.1f} MB as submitted ({size_mib:.1f} MiB); memory of the services:")
    for line in memory_lines:
        print(line)
    print(f"relayed by the gateway: {len(ours_numbers)} of {expected} copies, {encrypted} multipart/encrypted to {RECIPIENT}")
    if encrypted != expected or len(ours_numbers) != expected:
        print(f"WARNING: {expected - encrypted} of the gateway's {expected} copies are missing or not multipart/encrypted")
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
