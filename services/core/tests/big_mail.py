"""Big attachments between two people, with Python's mail clients.

send: big_mail.py send PORT USER TOKEN TO SUBJECT MIB SEED
  smtplib submits a message with MIB MiB of random bytes (from SEED)
  attached; prints the SHA-256 of the attachment.
read: big_mail.py read PORT USER TOKEN SUBJECT
  imaplib finds the message with that Subject in INBOX, prints a JSON
  object: the attachment's SHA-256 (decoded), its size, and the
  X-Leap-Encryption and X-Leap-Signature headers ("" if not there yet)."""

import email
import email.policy
import hashlib
import imaplib
import json
import random
import smtplib
import sys
from email.message import EmailMessage

mode, port, user, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

if mode == "send":
    to, subject, mib, seed = sys.argv[5], sys.argv[6], int(sys.argv[7]), int(sys.argv[8])
    data = random.Random(seed).randbytes(mib * 1024 * 1024)
    message = EmailMessage()
    message["From"] = user
    message["To"] = to
    message["Subject"] = subject
    message.set_content("the file, as promised\n")
    message.add_attachment(data, maintype="application", subtype="octet-stream", filename="file.bin")
    with smtplib.SMTP("127.0.0.1", port, timeout=600) as smtp:
        smtp.login(user, token)
        smtp.send_message(message)
    print(hashlib.sha256(data).hexdigest())
else:
    subject = sys.argv[5]
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    imap.login(user, token)
    imap.select("INBOX", readonly=True)
    typ, data = imap.uid("SEARCH", "SUBJECT", json.dumps(subject))
    uids = data[0].split()
    result = {"found": len(uids)}
    if uids:
        typ, data = imap.uid("FETCH", uids[-1], "(BODY.PEEK[])")
        raw = next(piece[1] for piece in data if isinstance(piece, tuple))
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        attachments = [part for part in parsed.walk() if part.get_filename() == "file.bin"]
        payload = attachments[0].get_payload(decode=True) if attachments else b""
        result.update(
            {
                "sha256": hashlib.sha256(payload).hexdigest(),
                "size": len(payload),
                "structure": [part.get_content_type() for part in parsed.walk()],
                "encryption": str(parsed.get("X-Leap-Encryption", "")),
                "signature": str(parsed.get("X-Leap-Signature", "")),
            }
        )
    imap.logout()
    print(json.dumps(result))
