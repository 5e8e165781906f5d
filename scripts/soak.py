"""The soak test's driver (run by scripts/soak, which builds and cleans up).

Real processes: a provider (bitmask-provider), two installations (two
bitmaskd homes): the first holds Alice's first device and Bob, the second
Alice's second device, restored from the provider. For --minutes the
workload runs: mail both ways by SMTP (smtplib to each account's gateway),
IMAP work on both of Alice's devices (imaplib: append, append the same bytes
again, copy, move, flags added and removed, expunge, mailboxes created,
renamed, deleted and created again), and a killer thread sends SIGKILL every
few seconds to one of the per-account services (store, keys, imap, smtp; the
account's bitmaskd restarts it) or to the provider (served again after a
pause). Then everything settles (the provider up, queues flushed, syncs on
every device until nothing changes) and the invariants are checked:

- both of Alice's devices show the same mailboxes with the same messages and
  flags (UIDs aside: messages compared by the SHA-256 of their bytes);
- no sync fails, nothing is quarantined, no incoming item waits or failed,
  nothing was filed as undecryptable, no outgoing mail waits;
- every service of every account is serving;
- nothing acknowledged to a client (APPEND/COPY/MOVE OK, SMTP 250) is lost
  unless a later acknowledged operation removed it, and nothing is there
  more often than it was put there (the model below);
- every message acknowledged by SMTP is delivered exactly once to each
  recipient (on each of Alice's devices); one whose submission a kill cut is
  there at most once;
- the provider's files hold none of the plaintext markers put in bodies.

The model. Each device owns the copies it made (APPEND, COPY, MOVE's new
copy) and knows them by their UIDs (local and stable); it expunges, moves and
copies only copies of its own, so a removal is known exactly. Each device
also owns mailboxes (D1-*, D2-*) that only it writes to and renames or
deletes; both devices write into the shared ones (INBOX, Sent, Drafts,
Trash, Junk), often the same bytes (the same content-addressed message), and
either device changes flags (never \\Deleted) on any message it sees. An
operation that got no OK (a kill cut it) leaves what it touched "maybe":
counted as possibly there and possibly gone. For each (mailbox, Message-ID)
the final count must lie between the copies surely there and those maybe
there. Flags are not modelled: they must only agree between the devices.

The RNG's seed (printed) fixes every choice of the workload and of the
killer; the timing of kills against operations is the machine's.
"""

import argparse
import collections
import hashlib
import imaplib
import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

DOMAIN = "example.org"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
SHARED = ["INBOX", "Sent", "Drafts", "Trash", "Junk"]
SERVICES = ["store", "keys", "imap", "smtp"]
FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Soak"]
MARKER = "soakplain"
IMAP_TIMEOUT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Journal:
    """Every operation and its outcome, for reading after a failure."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def __call__(self, text):
        with self.lock:
            self.file.write(f"{time.monotonic() - self.started:9.3f} {text}\n")


class Provider:
    def __init__(self, bin_dir, work, journal):
        self.bin = os.path.join(bin_dir, "bitmask-provider")
        self.dir = os.path.join(work, "provider")
        self.log = os.path.join(work, "provider.log")
        self.journal = journal
        self.process = None
        self.https_port = free_port()
        ports = [self.https_port, free_port(), free_port()]
        subprocess.run(
            [self.bin, "init", "--domain", DOMAIN, "--dir", self.dir, "--https-port", str(ports[0]),
             "--mx-port", str(ports[1]), "--relay-port", str(ports[2]), "--signup", "open"],
            check=True, stdout=subprocess.DEVNULL)

    def serve(self):
        ready = os.path.join(self.dir, "..", "provider.ready")
        with open(ready, "w") as out, open(self.log, "a") as err:
            self.process = subprocess.Popen([self.bin, "serve", "--dir", self.dir], stdout=out, stderr=err,
                                            stdin=subprocess.DEVNULL)
        record_pid(self.process.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(ready) as f:
                if "ready" in f.read():
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"the provider exited ({self.process.returncode}); see {self.log}")
            time.sleep(0.05)
        raise RuntimeError(f"the provider was not ready in 60 s; see {self.log}")

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def up(self):
        return self.process is not None and self.process.poll() is None


PIDS_FILE = None


def record_pid(pid):
    if PIDS_FILE:
        with open(PIDS_FILE, "a") as f:
            f.write(f"{pid}\n")


class Daemon:
    """One installation: a bitmaskd with its own home and runtime directory."""

    def __init__(self, name, bin_dir, work):
        self.name = name
        self.bin_dir = bin_dir
        self.dir = os.path.join(work, name)
        self.home = os.path.join(self.dir, "home")
        self.env = dict(os.environ, BITMASK_HOME=self.home, BITMASK_RUNTIME_DIR=os.path.join(self.dir, "run"))
        self.env.pop("RUST_LOG", None)
        os.makedirs(self.dir)
        self.log = os.path.join(self.dir, "bitmaskd.log")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([os.path.join(bin_dir, "bitmaskd")], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        record_pid(self.process.pid)
        deadline = time.monotonic() + 30
        while self.ctl("status").returncode != 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"bitmaskd {name} did not start; see {self.log}")
            time.sleep(0.1)

    def ctl(self, *args, timeout=120):
        try:
            return subprocess.run([os.path.join(self.bin_dir, "bitmaskctl"), *args], env=self.env,
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as error:
            return subprocess.CompletedProcess(error.cmd, 124, "", f"timed out after {timeout} s")

    def ctl_json(self, *args, timeout=120):
        done = self.ctl("--json", *args, timeout=timeout)
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout)
        except ValueError:
            return None

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Account:
    """One device of one account: its daemon, ports and token."""

    def __init__(self, label, daemon, address, provider, passphrase_file):
        self.label, self.daemon, self.address = label, daemon, address
        self.imap_port, self.smtp_port = free_port(), free_port()
        added = daemon.ctl("account", "add", address, "--provider", f"https://localhost:{provider.https_port}",
                           "--provider-ca", os.path.join(provider.dir, "ca.pem"), "--passphrase-file",
                           passphrase_file, "--imap-port", str(self.imap_port), "--smtp-port",
                           str(self.smtp_port), timeout=300)
        if added.returncode != 0:
            raise RuntimeError(f"account add {address} on {daemon.name}: {added.stdout}{added.stderr}")
        self.token = daemon.ctl_json("mail", "token", address)["token"]
        deadline = time.monotonic() + 60
        while not (port_open(self.imap_port) and port_open(self.smtp_port)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateways of {label} do not listen")
            time.sleep(0.1)

    def logs(self):
        return os.path.join(self.daemon.home, "accounts", self.address, "logs")

    def services(self):
        status = self.daemon.ctl_json("status", self.address, timeout=30)
        if not status:
            return {}
        return {service["service"]: service for service in status[0].get("services", [])}


class Killer(threading.Thread):
    """SIGKILL to a random service or the provider every few seconds."""

    def __init__(self, rng, accounts, provider, journal, every):
        super().__init__(daemon=True)
        self.rng, self.accounts, self.provider, self.journal, self.every = rng, accounts, provider, journal, every
        self.stopping = threading.Event()
        self.kills = collections.Counter()
        self.error = None

    def run(self):
        try:
            while not self.stopping.wait(self.rng.uniform(*self.every)):
                if self.rng.random() < 0.2:
                    self.journal("kill -9 provider")
                    self.provider.kill()
                    self.kills["provider"] += 1
                    if self.stopping.wait(self.rng.uniform(0.2, 3.0)):
                        break
                    self.provider.serve()
                    self.journal("provider served again")
                    continue
                account = self.rng.choice(self.accounts)
                service = self.rng.choice(SERVICES)
                pid = account.services().get(service, {}).get("pid")
                if not pid:
                    self.journal(f"kill {account.label} {service}: no pid (restarting)")
                    continue
                self.journal(f"kill -9 {account.label} {service} pid {pid}")
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.kills[service] += 1
                except ProcessLookupError:
                    pass
        except Exception as error:  # reported by the main thread
            self.error = error
            self.journal(f"killer failed: {error!r}")
        finally:
            if not self.provider.up():
                self.provider.serve()


class Copy:
    """A message copy a device made, as the model knows it."""

    def __init__(self, key, mailbox, owner, uid, state):
        self.key, self.mailbox, self.owner, self.uid, self.state = key, mailbox, owner, uid, state

    def __repr__(self):
        return f"{self.key} in {self.mailbox} uid {self.uid} of dev{self.owner + 1} ({self.state})"


class Cut(Exception):
    """The server gave no OK: the operation's outcome is unknown."""


class Device:
    """One of Alice's devices as an IMAP client, with the mailboxes it owns."""

    def __init__(self, index, account, journal):
        self.index, self.account, self.journal = index, account, journal
        self.imap = None
        self.selected = None
        # Owned mailbox name -> "present" | "gone" | "unknown" (a cut operation not yet resolved).
        self.mailboxes = {}
        # The mailbox operation under way: ("create", name) | ("rename", old, new) | ("delete", name).
        self.pending = None

    def names(self):
        return [name for name, state in self.mailboxes.items() if state == "present"]

    def drop(self):
        if self.imap is not None:
            try:
                self.imap.shutdown()
            except Exception:
                pass
        self.imap, self.selected = None, None

    def connect(self):
        """Logged in, or False (the gateway is away: the operation is skipped)."""
        if self.imap is not None:
            return True
        try:
            imap = imaplib.IMAP4("127.0.0.1", self.account.imap_port, timeout=IMAP_TIMEOUT)
            imap.login(self.account.address, self.account.token)
        except Exception as error:
            self.journal(f"dev{self.index + 1} connect: {error!r}")
            return False
        self.imap = imap
        return True

    def command(self, what, *args):
        """Runs one IMAP command; OK or Cut (and the connection dropped)."""
        try:
            self.imap.untagged_responses.pop("COPYUID", None)
            self.imap.untagged_responses.pop("APPENDUID", None)
            if what == "uid":
                typ, data = self.imap.uid(*args)
            else:
                typ, data = getattr(self.imap, what)(*args)
        except Exception as error:
            self.journal(f"dev{self.index + 1} {what} {args[:2]}: {error!r}")
            self.drop()
            raise Cut() from error
        if typ != "OK":
            self.journal(f"dev{self.index + 1} {what} {args[:2]}: {typ} {data!r}")
            raise Cut()
        return data

    def select(self, mailbox):
        if self.selected == mailbox:
            return
        self.selected = None
        self.command("select", mailbox)
        self.selected = mailbox

    def code(self, name):
        values = self.imap.untagged_responses.pop(name, None) if self.imap else None
        if not values:
            return None
        return values[-1].decode() if isinstance(values[-1], bytes) else str(values[-1])

    def listing(self):
        """The names of the selectable mailboxes this device shows."""
        names = set()
        for line in self.command("list", '""', "*"):
            if not line:
                continue
            match = re.match(rb'\(([^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (.*)$', line)
            if not match or b"\\noselect" in match.group(1).lower():
                continue
            name = match.group(2)
            if name.startswith(b'"'):
                name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
            names.add(name.decode())
        return names


def message_id(raw):
    match = re.search(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]*>)", raw.split(b"\r\n\r\n", 1)[0])
    return match.group(1).decode() if match else None


def parse_fetch(data):
    """(uid, flags, raw) of each message in a UID FETCH (UID FLAGS BODY.PEEK[]) answer."""
    out = []
    pending = None
    for item in data:
        if isinstance(item, tuple):
            head, raw = item
            pending = [head, raw]
            out.append(pending)
        elif isinstance(item, bytes) and pending is not None:
            pending[0] += item
            pending = None
    result = []
    for head, raw in out:
        uid = re.search(rb"UID (\d+)", head)
        flags = re.search(rb"FLAGS \(([^)]*)\)", head)
        names = flags.group(1).decode().split() if flags else []
        result.append((int(uid.group(1)) if uid else 0, frozenset(f for f in names if f != "\\Recent"), raw))
    return result


def snapshot(account):
    """{mailbox: [(message-id, sha256, flags)]} as the account's IMAP shows it, or raises."""
    imap = imaplib.IMAP4("127.0.0.1", account.imap_port, timeout=120)
    try:
        imap.login(account.address, account.token)
        device = Device(0, account, lambda text: None)
        device.imap = imap
        view = {}
        for name in sorted(device.listing()):
            typ, data = imap.select(f'"{name}"', readonly=True)
            if typ != "OK":
                raise RuntimeError(f"EXAMINE {name}: {data}")
            messages = []
            if int(data[0]) > 0:
                typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
                got = parse_fetch(data)
                if typ != "OK":
                    # Some message cannot be read: each one that cannot is named.
                    typ, found = imap.uid("SEARCH", "ALL")
                    for uid in found[0].split() if typ == "OK" else []:
                        if any(str(u).encode() == uid for u, _f, _r in got):
                            continue
                        typ, data = imap.uid("FETCH", uid, "(UID FLAGS BODY.PEEK[])")
                        single = parse_fetch(data) if typ == "OK" else []
                        if single:
                            got.extend(single)
                        else:
                            typ, data = imap.uid("FETCH", uid, "(UID FLAGS)")
                            flags = parse_fetch([(data[0], b"")])[0][1] if typ == "OK" and data[0] else frozenset()
                            messages.append((f"<unreadable uid {uid.decode()}>", "unreadable", flags))
                for _uid, flags, raw in got:
                    messages.append((message_id(raw), hashlib.sha256(raw).hexdigest()[:16], flags))
            view[name] = sorted(messages, key=lambda m: (m[0] or "", m[1], sorted(m[2])))
        return view
    finally:
        try:
            imap.logout()
        except Exception:
            pass


class Soak:
    def __init__(self, args, accounts, devices, provider, journal):
        self.args = args
        self.rng = random.Random(args.seed)
        self.alice1, self.bob, self.alice2 = accounts
        self.devices = devices
        self.provider = provider
        self.journal = journal
        self.messages = {}  # Message-ID -> bytes appended by IMAP
        self.copies = []  # Copy
        self.sends = []  # (Message-ID, recipients, acknowledged)
        self.operations = collections.Counter()
        self.cut = 0
        self.counter = 0

    # ---- messages

    def new_message(self):
        self.counter += 1
        n = self.counter
        key = f"<a{n}.s{self.args.seed}@soak.example>"
        size = self.rng.choice([0, 1, 5, 20, 60])
        filler = "".join(self.rng.choice("abcdefghij klmnop\r\n") for _ in range(size * 40))
        body = f"Appended message {n}. {MARKER}-{self.args.seed}-a{n}\r\n{filler}\r\n"
        head = (f"From: Alice <{ALICE}>\r\nTo: Carol <carol@example.net>\r\nSubject: soak {n}\r\n"
                f"Date: Thu, 3 Dec 2026 10:{n % 60:02d}:00 +0000\r\nMessage-ID: {key}\r\n")
        if self.rng.random() < 0.05:
            # Over 64 KiB: the part goes to the store as a blob.
            blob = "".join(self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/") for _ in range(76))
            attachment = "\r\n".join(blob[i:] + blob[:i] for i in range(0, 76) for _ in range(13))
            raw = (f"{head}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b{n}\"\r\n\r\n"
                   f"--b{n}\r\nContent-Type: text/plain\r\n\r\n{body}--b{n}\r\n"
                   f"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                   f"{attachment}\r\n--b{n}--\r\n")
        else:
            raw = f"{head}Content-Type: text/plain\r\n\r\n{body}"
        self.messages[key] = raw.encode()
        return key

    def random_flags(self):
        return "(" + " ".join(f for f in FLAGS if self.rng.random() < 0.3) + ")"

    def target(self, device):
        return self.rng.choice(SHARED + device.names())

    def owned(self, device):
        return [copy for copy in self.copies if copy.owner == device.index and copy.state == "present"]

    # ---- operations on one device

    def op_append(self, device, again):
        if again and self.messages:
            key = self.rng.choice(sorted(self.messages))
        else:
            key = self.new_message()
        mailbox = self.target(device)
        date = imaplib.Time2Internaldate(time.time() - self.rng.randrange(10**7))
        copy = Copy(key, mailbox, device.index, None, "maybe")
        self.copies.append(copy)
        device.command("append", f'"{mailbox}"', self.random_flags(), date, self.messages[key])
        uid = device.code("APPENDUID")
        if uid:
            copy.uid, copy.state = int(uid.split()[1]), "present"
        self.journal(f"dev{device.index + 1} append {key} to {mailbox}: uid {copy.uid}")

    def op_copy(self, device, move):
        owned = self.owned(device)
        if not owned:
            return self.op_append(device, False)
        source = self.rng.choice(owned)
        destinations = [m for m in SHARED + device.names() if not (move and m == source.mailbox)]
        destination = self.rng.choice(destinations)
        device.select(f'"{source.mailbox}"')
        copy = Copy(source.key, destination, device.index, None, "maybe")
        self.copies.append(copy)
        if move:
            source.state = "maybe"
        device.command("uid", "MOVE" if move else "COPY", str(source.uid), f'"{destination}"')
        uids = device.code("COPYUID")
        if uids:
            _validity, old, new = uids.split()
            if old == str(source.uid):
                copy.uid, copy.state = int(new), "present"
        if move:
            # Moved (OK): the source is gone, whether or not the answer named the new copy.
            self.copies.remove(source)
        self.journal(f"dev{device.index + 1} {'move' if move else 'copy'} {source.key} "
                     f"{source.mailbox}/{source.uid} to {destination}: uid {copy.uid}")

    def op_flags(self, device):
        owned = self.owned(device)
        if owned and self.rng.random() < 0.6:
            copy = self.rng.choice(owned)
            mailbox, uid = copy.mailbox, str(copy.uid)
        else:
            mailbox = self.rng.choice(SHARED)
            device.select(f'"{mailbox}"')
            found = device.command("uid", "SEARCH", "ALL")[0].split()
            if not found:
                return
            uid = self.rng.choice(found).decode()
        device.select(f'"{mailbox}"')
        change = self.rng.choice(["+FLAGS.SILENT", "-FLAGS.SILENT"])
        flags = "(" + " ".join(self.rng.sample(FLAGS, self.rng.randint(1, 2))) + ")"
        device.command("uid", "STORE", uid, change, flags)
        self.journal(f"dev{device.index + 1} store {mailbox}/{uid} {change} {flags}")

    def op_expunge(self, device):
        owned = self.owned(device)
        if not owned:
            return
        copy = self.rng.choice(owned)
        device.select(f'"{copy.mailbox}"')
        copy.state = "maybe"
        device.command("uid", "STORE", str(copy.uid), "+FLAGS.SILENT", "(\\Deleted)")
        if self.rng.random() < 0.7:
            device.command("uid", "EXPUNGE", str(copy.uid))
        else:
            device.command("expunge")
        self.copies.remove(copy)
        self.journal(f"dev{device.index + 1} expunge {copy.key} {copy.mailbox}/{copy.uid}")

    def op_mailbox(self, device):
        pool = [f"D{device.index + 1}-{letter}" for letter in "abcde"]
        present = device.names()
        absent = [name for name in pool if device.mailboxes.get(name, "gone") == "gone"]
        choices = []
        if absent:
            choices.append("create")
        if present and absent:
            choices.append("rename")
        if present:
            choices.append("delete")
        if not choices:
            # Every name of the pool is in doubt (cut mid-command): nothing to choose until a sync says.
            return
        action = self.rng.choice(choices)
        if action == "create":
            name = self.rng.choice(absent)
            device.mailboxes[name], device.pending = "unknown", ("create", name)
            self.journal(f"dev{device.index + 1} create {name}")
            device.command("create", f'"{name}"')
            device.mailboxes[name], device.pending = "present", None
        elif action == "rename":
            old, new = self.rng.choice(present), self.rng.choice(absent)
            device.mailboxes[old] = device.mailboxes[new] = "unknown"
            device.pending = ("rename", old, new)
            inside = [copy for copy in self.copies if copy.mailbox == old]
            self.journal(f"dev{device.index + 1} rename {old} {new} ({len(inside)} copies)")
            if device.selected == f'"{old}"':
                device.selected = None
            device.command("rename", f'"{old}"', f'"{new}"')
            device.mailboxes[old], device.mailboxes[new], device.pending = "gone", "present", None
            for copy in inside:
                copy.mailbox = new
        else:
            name = self.rng.choice(present)
            device.mailboxes[name], device.pending = "unknown", ("delete", name)
            inside = [copy for copy in self.copies if copy.mailbox == name]
            self.journal(f"dev{device.index + 1} delete {name} ({len(inside)} copies)")
            if device.selected == f'"{name}"':
                device.command("unselect")
                device.selected = None
            device.command("delete", f'"{name}"')
            device.mailboxes[name], device.pending = "gone", None
            for copy in inside:
                self.copies.remove(copy)

    def resolve(self, device):
        """After a cut: what the device's own listing says of a mailbox operation left unknown."""
        if device.pending is None or not device.connect():
            return
        try:
            listed = device.listing()
        except Cut:
            return
        action, *names = device.pending
        device.pending = None
        for name in names:
            device.mailboxes[name] = "present" if name in listed else "gone"
        self.journal(f"dev{device.index + 1} resolved {action} {names}: {[device.mailboxes[n] for n in names]}")
        if action == "rename" and device.mailboxes[names[1]] == "present" and device.mailboxes[names[0]] == "gone":
            for copy in self.copies:
                if copy.mailbox == names[0]:
                    copy.mailbox = names[1]
        for copy in list(self.copies):
            if copy.mailbox in names:
                if device.mailboxes[copy.mailbox] == "gone":
                    self.copies.remove(copy)
                elif copy.state == "present":
                    # A delete or rename cut half-way may have taken some copies.
                    copy.state = "maybe"

    # ---- SMTP

    def op_send(self):
        self.counter += 1
        n = self.counter
        key = f"<s{n}.s{self.args.seed}@{DOMAIN}>"
        choice = self.rng.random()
        if choice < 0.45:
            sender, recipients = self.rng.choice([self.alice1, self.alice2]), [BOB]
        elif choice < 0.85:
            sender, recipients = self.bob, [ALICE]
        else:
            sender, recipients = self.rng.choice([self.alice1, self.alice2]), [ALICE, BOB]
        message = (f"From: {sender.address}\r\nTo: {', '.join(recipients)}\r\nSubject: soak mail {n}\r\n"
                   f"Message-ID: {key}\r\n\r\nMail number {n}. {MARKER}-{self.args.seed}-s{n}\r\n").encode()
        try:
            client = smtplib.SMTP("127.0.0.1", sender.smtp_port, timeout=60)
        except OSError as error:
            self.journal(f"send {key} from {sender.label}: connect {error!r}")
            return
        acknowledged = False
        try:
            client.login(sender.address, sender.token)
            client.sendmail(sender.address, recipients, message)
            acknowledged = True
        except smtplib.SMTPAuthenticationError as error:
            self.journal(f"send {key} from {sender.label}: login {error!r}")
            return
        except Exception as error:
            self.journal(f"send {key} from {sender.label}: {error!r}")
        finally:
            try:
                client.quit()
            except Exception:
                pass
        self.sends.append((key, recipients, acknowledged))
        if not acknowledged:
            self.cut += 1
        self.journal(f"send {key} from {sender.label} to {recipients}: {'250' if acknowledged else 'cut'}")

    # ---- the workload

    def step(self):
        roll = self.rng.random()
        if roll < 0.15:
            self.operations["send"] += 1
            return self.op_send()
        device = self.rng.choice(self.devices)
        if not device.connect():
            self.operations["skipped"] += 1
            return
        try:
            if roll < 0.35:
                kind = "append"
                self.op_append(device, False)
            elif roll < 0.45:
                kind = "append-again"
                self.op_append(device, True)
            elif roll < 0.55:
                kind = "copy"
                self.op_copy(device, False)
            elif roll < 0.63:
                kind = "move"
                self.op_copy(device, True)
            elif roll < 0.78:
                kind = "flags"
                self.op_flags(device)
            elif roll < 0.90:
                kind = "expunge"
                self.op_expunge(device)
            else:
                kind = "mailbox"
                self.op_mailbox(device)
            self.operations[kind] += 1
        except Cut:
            self.operations["cut"] += 1
            self.cut += 1
            device.drop()
            self.resolve(device)

    def run(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()
            time.sleep(self.rng.uniform(0, self.args.pace * 2))
        for device in self.devices:
            device.drop()


def wait_services(accounts, seconds, journal):
    """True once every service of every account serves."""
    deadline = time.monotonic() + seconds
    while True:
        down = []
        for account in accounts:
            services = account.services()
            for name in SERVICES:
                if services.get(name, {}).get("state") != "serving":
                    down.append(f"{account.label} {name}: {services.get(name, {}).get('state', 'no status')}")
        if not down:
            return []
        if time.monotonic() > deadline:
            journal(f"not serving: {down}")
            return down
        time.sleep(1)


def settle(accounts, journal, seconds):
    """Flush, sync every device until two rounds in a row show the same; the last round's facts."""
    deadline = time.monotonic() + seconds
    previous = None
    rounds = 0
    while True:
        rounds += 1
        facts = {}
        for account in accounts:
            account.daemon.ctl("mail", "queue", account.address, "--flush", timeout=60)
        for account in accounts:
            synced = account.daemon.ctl("sync", account.address, timeout=300)
            facts[account.label] = {"sync": synced}
        for account in accounts:
            facts[account.label]["mail"] = account.daemon.ctl_json("mail", "status", account.address, timeout=60)
            facts[account.label]["queue"] = account.daemon.ctl_json("mail", "queue", account.address, timeout=60)
            status = account.daemon.ctl_json("status", account.address, timeout=60)
            facts[account.label]["status"] = status[0] if status else None
        views = {}
        for account in accounts:
            try:
                views[account.label] = snapshot(account)
            except Exception as error:
                views[account.label] = f"snapshot failed: {error!r}"
        quiet = all(
            fact["sync"].returncode == 0 and fact["mail"] is not None and fact["mail"].get("incoming_pending", 0) == 0
            and fact["queue"] == [] for fact in facts.values())
        journal(f"settle round {rounds}: quiet {quiet}, same {views == previous}")
        if (quiet and views == previous) or time.monotonic() > deadline:
            return facts, views, rounds
        previous = views
        time.sleep(2)


def grep_tree(directory, needle):
    hits = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def check(soak, facts, views, down, provider, accounts):
    details = []
    alice_views = {label: views[label] for label in ("alice1", "alice2")}
    for label, view in views.items():
        if isinstance(view, str):
            details.append(f"{label}: {view}")
    good = {label: view for label, view in alice_views.items() if not isinstance(view, str)}

    # Devices diverged.
    diverged = 0
    if len(good) == 2:
        one, two = good["alice1"], good["alice2"]
        for name in sorted(set(one) | set(two)):
            if name not in one or name not in two:
                diverged += 1
                details.append(f"diverged: mailbox {name} only on {'alice1' if name in one else 'alice2'}")
                continue
            a = collections.Counter((m[1], m[2]) for m in one[name])
            b = collections.Counter((m[1], m[2]) for m in two[name])
            if a != b:
                diverged += 1
                ids = {m[1]: m[0] for m in one[name] + two[name]}
                only1 = [(ids[h], sorted(f)) for (h, f) in (a - b).elements()]
                only2 = [(ids[h], sorted(f)) for (h, f) in (b - a).elements()]
                details.append(f"diverged: {name}: only on alice1 {only1[:10]}; only on alice2 {only2[:10]}")
    elif len(alice_views) == 2:
        diverged = 1

    # The model: bounds per (mailbox, Message-ID) for IMAP-made copies.
    sure = collections.Counter()
    maybe = collections.Counter()
    for copy in soak.copies:
        if copy.state == "present":
            sure[(copy.mailbox, copy.key)] += 1
        else:
            maybe[(copy.mailbox, copy.key)] += 1
    unknown_names = {name for device in soak.devices for name, state in device.mailboxes.items()
                     if state == "unknown"}
    sent_keys = {key for key, _, _ in soak.sends}
    lost_by = {}
    duplicated_by = {}
    unexpected = unreadable = 0
    strangers = collections.defaultdict(list)  # (device, mailbox) -> Message-IDs nobody put there
    for label, view in good.items():
        lost = duplicated = 0
        seen = collections.Counter()
        for name, messages in view.items():
            for key, _sha, _flags in messages:
                if key in sent_keys:
                    continue
                if key and key.startswith("<unreadable"):
                    unreadable += 1
                    details.append(f"{label}: a message in {name} cannot be read: {key}")
                    continue
                if key not in soak.messages:
                    unexpected += 1
                    strangers[(label, name)].append(key)
                    continue
                seen[(name, key)] += 1
        for place in set(seen) | set(sure) | set(maybe):
            name, key = place
            if name in unknown_names:
                continue
            have, low, high = seen[place], sure[place], sure[place] + maybe[place]
            if have < low:
                lost += low - have
                details.append(f"{label}: lost {key} in {name}: {have} there, at least {low} expected")
            elif have > high:
                duplicated += have - high
                details.append(f"{label}: {key} in {name} {have} times, at most {high} expected")
        for device in soak.devices:
            for name, state in device.mailboxes.items():
                if state == "present" and name not in view:
                    lost += 1
                    details.append(f"{label}: mailbox {name} (dev{device.index + 1}'s) is missing")
                if state == "gone" and name in view:
                    duplicated += 1
                    details.append(f"{label}: mailbox {name} (dev{device.index + 1}'s, deleted) is there")
        lost_by[label], duplicated_by[label] = lost, duplicated

    # SMTP: exactly once per recipient (and device).
    inboxes = {label: collections.Counter(m[0] for m in view.get("INBOX", []))
               for label, view in views.items() if not isinstance(view, str)}
    sent = delivered = smtp_lost = smtp_duplicated = 0
    if not isinstance(views.get("bob"), str):
        for name, messages in views["bob"].items():
            for key, _sha, _flags in messages:
                if key not in sent_keys:
                    unexpected += 1
                    strangers[("bob", name)].append(key)
    for (label, name), keys in sorted(strangers.items()):
        details.append(f"{label}: {len(keys)} unexpected messages in {name}, e.g. {keys[:5]}")
    for key, recipients, acknowledged in soak.sends:
        sent += acknowledged
        for recipient in recipients:
            labels = ["bob"] if recipient == BOB else ["alice1", "alice2"]
            counts = [inboxes[label][key] for label in labels if label in inboxes]
            if counts and min(counts) >= 1:
                delivered += 1 if acknowledged else 0
            for label, count in zip([l for l in labels if l in inboxes], counts):
                if count > 1:
                    smtp_duplicated += count - 1
                    details.append(f"{label}: {key} delivered {count} times")
                if count == 0 and acknowledged:
                    smtp_lost += 1
                    details.append(f"{label}: {key} acknowledged (250) and never delivered")
    expected_deliveries = sum(len(r) for _, r, a in soak.sends if a)

    # Syncs and queues.
    failing = 0
    for label, fact in facts.items():
        problems = []
        if fact["sync"].returncode != 0:
            problems.append(f"sync exit {fact['sync'].returncode}: {(fact['sync'].stderr or fact['sync'].stdout).strip()}")
        status = fact["status"] or {}
        result = status.get("last_sync_result", "")
        if status.get("state") != "running":
            problems.append(f"account {status.get('state', 'without status')}")
        if not result.startswith("ok") or "quarantined" in result:
            problems.append(f"last sync: {result!r}")
        if status.get("quarantined"):
            problems.append(f"quarantined: {status['quarantined']}")
        mail = fact["mail"] or {}
        if fact["mail"] is None:
            problems.append("mail status failed")
        if mail.get("incoming_pending"):
            problems.append(f"{mail['incoming_pending']} incoming items waiting")
        if mail.get("incoming_problems"):
            problems.append(f"incoming problems: {mail['incoming_problems']}")
        if mail.get("undecryptable"):
            problems.append(f"{mail['undecryptable']} filed as undecryptable")
        if fact["queue"] != []:
            problems.append(f"outgoing queue: {fact['queue'] if fact['queue'] is not None else 'mail queue failed'}")
        if problems:
            failing += 1
            details.append(f"{label}: " + "; ".join(problems))
    for line in down:
        details.append(f"service never came back: {line}")

    # Plaintext at the provider (and in the devices' stores).
    marker = f"{MARKER}-{soak.args.seed}-".encode()
    for path in grep_tree(provider.dir, marker):
        details.append(f"plaintext at the provider: {path}")
    for account in accounts:
        store = os.path.join(account.daemon.home, "accounts", account.address, "store")
        for path in grep_tree(store, marker):
            details.append(f"plaintext in {account.label}'s store: {path}")
    plaintext = sum(1 for line in details if line.startswith("plaintext"))

    lost = max(lost_by.values(), default=0) + smtp_lost
    duplicated = max(duplicated_by.values(), default=0) + smtp_duplicated
    return {
        "sent": sent, "expected_deliveries": expected_deliveries, "delivered": delivered, "lost": lost,
        "duplicated": duplicated, "unexpected": unexpected, "unreadable": unreadable, "diverged": diverged, "failing": failing,
        "down": len(down), "plaintext": plaintext, "details": details,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--pace", type=float, default=0.05, help="mean seconds between operations")
    parser.add_argument("--kill-every", default="2,6", help="seconds between kills: MIN,MAX")
    parser.add_argument("--settle", type=float, default=300, help="seconds the settling may take at most")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    global PIDS_FILE
    PIDS_FILE = os.path.join(args.work, "pids")
    journal = Journal(os.path.join(args.work, "soak.log"))
    print(f"soak: seed {args.seed}, {args.minutes:g} minutes, work and logs in {args.work}", flush=True)
    journal(f"seed {args.seed} minutes {args.minutes}")

    provider = Provider(args.bin, args.work, journal)
    daemons = []
    killer = None
    try:
        provider.serve()
        first, second = Daemon("d1", args.bin, args.work), Daemon("d2", args.bin, args.work)
        daemons = [first, second]
        passphrase = os.path.join(args.work, "passphrase")
        with open(passphrase, "w") as f:
            f.write("soak passphrase\n")
        alice1 = Account("alice1", first, ALICE, provider, passphrase)
        bob = Account("bob", first, BOB, provider, passphrase)
        alice2 = Account("alice2", second, ALICE, provider, passphrase)
        accounts = [alice1, bob, alice2]
        journal("set up")
        devices = [Device(0, alice1, journal), Device(1, alice2, journal)]
        soak = Soak(args, accounts, devices, provider, journal)
        low, high = (float(x) for x in args.kill_every.split(","))
        killer = Killer(random.Random(args.seed * 7919 + 1), accounts, provider, journal, (low, high))
        killer.start()
        soak.run(args.minutes * 60)
        killer.stopping.set()
        killer.join(120)
        if not provider.up():
            provider.serve()
        journal("workload done; settling")
        down = wait_services(accounts, 120, journal)
        facts, views, rounds = settle(accounts, journal, args.settle)
        result = check(soak, facts, views, down, provider, accounts)
        with open(os.path.join(args.work, "final-state.json"), "w") as f:
            json.dump({label: view if isinstance(view, str) else
                       {name: [[m[0], m[1], sorted(m[2])] for m in messages] for name, messages in view.items()}
                       for label, view in views.items()}, f, indent=1)
        if result["diverged"] or result["unreadable"]:
            # Whether the stores differ, or only what a running IMAP gateway shows.
            for account in (alice1, alice2):
                pid = account.services().get("imap", {}).get("pid")
                if pid:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(1)
            wait_services(accounts, 60, journal)
            try:
                again = {account.label: snapshot(account) for account in (alice1, alice2)}
                same = again["alice1"] == again["alice2"]
                result["details"].append(
                    f"after a restart of both IMAP gateways the devices {'agree' if same else 'still differ'}"
                    f" ({'alice1' if again['alice1'] == views['alice1'] else 'not alice1'},"
                    f" {'alice2' if again['alice2'] == views['alice2'] else 'not alice2'} unchanged by the restart)")
            except Exception as error:
                result["details"].append(f"after a restart of both IMAP gateways: snapshot failed: {error!r}")
        operations = sum(v for k, v in soak.operations.items() if k not in ("skipped", "cut"))
        kills = sum(killer.kills.values())
        ok = not (result["lost"] or result["duplicated"] or result["unexpected"] or result["unreadable"]
                  or result["diverged"]
                  or result["failing"] or result["down"] or result["plaintext"] or killer.error)
        print(f"soak: seed={args.seed} minutes={args.minutes:g} operations={operations} cut={soak.cut} "
              f"kills={kills} sent={result['sent']} delivered={result['delivered']}/{result['expected_deliveries']} "
              f"lost={result['lost']} duplicated={result['duplicated']} unexpected={result['unexpected']} "
              f"unreadable={result['unreadable']} "
              f"diverged={result['diverged']} syncs_failing={result['failing']} "
              f"{'PASS' if ok else 'FAIL'}", flush=True)
        journal(f"operations {dict(soak.operations)} kills {dict(killer.kills)} settle rounds {rounds}")
        if not ok:
            if killer.error:
                print(f"  the killer failed: {killer.error!r}")
            for line in result["details"][:200]:
                print(f"  {line}")
            print(f"  logs: {args.work}/soak.log (operations), {args.work}/provider.log, "
                  f"{args.work}/d1/home/accounts/*/logs/, {args.work}/d2/home/accounts/*/logs/, "
                  f"{args.work}/final-state.json")
        return 0 if ok else 1
    finally:
        if killer is not None:
            killer.stopping.set()
        for daemon in daemons:
            daemon.stop()
        provider.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
