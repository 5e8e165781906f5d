//! The IMAP gateway driven by mbsync (isync), a synchronizer this project
//! did not write: a 1,000-message account mirrored to a local Maildir and
//! back, flags changed on either side reaching the other, a run with no
//! change transferring nothing.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bitmask_testkit::{World, free_port, text, wait_until};

const ACCOUNT: &str = "alice@example.org";
const MESSAGES: usize = 1000;

/// A minimal IMAP client: commands one at a time (or APPENDs pipelined
/// with LITERAL+), literals in responses read whole.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tags: u32,
}

/// One response line with the literals it carried (in order).
struct Line {
    text: String,
    literals: Vec<Vec<u8>>,
}

impl Client {
    fn login(port: u16, token: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut client = Self { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream, tags: 0 };
        let greeting = client.line();
        assert!(greeting.text.starts_with("* OK"), "{}", greeting.text);
        client.ok(&format!("LOGIN {ACCOUNT} {token}"));
        client
    }

    /// A response line; a literal `{n}` at its end is read and the line goes on after it.
    fn line(&mut self) -> Line {
        let mut line = Line { text: String::new(), literals: Vec::new() };
        loop {
            let mut part = Vec::new();
            self.reader.read_until(b'\n', &mut part).unwrap();
            assert!(part.ends_with(b"\r\n"), "connection closed or a bare LF after {:?}", line.text);
            let part = String::from_utf8(part).unwrap();
            let part = part.trim_end_matches("\r\n");
            line.text.push_str(part);
            let Some(size) = part.strip_suffix('}').and_then(|rest| rest.rsplit_once('{')).map(|(_, n)| n) else {
                return line;
            };
            let mut literal = vec![0; size.parse().unwrap()];
            self.reader.read_exact(&mut literal).unwrap();
            line.literals.push(literal);
        }
    }

    fn tag(&mut self) -> String {
        self.tags += 1;
        format!("t{}", self.tags)
    }

    /// The lines up to the tagged status of `tag`, which must be OK.
    fn until_ok(&mut self, tag: &str, what: &str) -> Vec<Line> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            if let Some(status) = line.text.strip_prefix(&format!("{tag} ")) {
                assert!(status.starts_with("OK"), "{what}: {status}");
                lines.push(line);
                return lines;
            }
            lines.push(line);
        }
    }

    /// Sends a command (no literals) which must succeed; returns every line.
    fn ok(&mut self, command: &str) -> Vec<Line> {
        let tag = self.tag();
        self.writer.write_all(format!("{tag} {command}\r\n").as_bytes()).unwrap();
        self.until_ok(&tag, command)
    }

    /// Appends every message to INBOX with its flags, pipelined in batches
    /// (LITERAL+: no waiting for continuations); returns the UIDs (APPENDUID).
    fn append_all(&mut self, messages: &[(Vec<u8>, String)]) -> Vec<u32> {
        let mut uids = Vec::with_capacity(messages.len());
        for batch in messages.chunks(100) {
            let mut bytes = Vec::new();
            let mut tags = Vec::new();
            for (message, flags) in batch {
                let tag = self.tag();
                bytes.extend_from_slice(format!("{tag} APPEND INBOX ({flags}) {{{}+}}\r\n", message.len()).as_bytes());
                bytes.extend_from_slice(message);
                bytes.extend_from_slice(b"\r\n");
                tags.push(tag);
            }
            self.writer.write_all(&bytes).unwrap();
            for tag in tags {
                let lines = self.until_ok(&tag, "APPEND");
                let status = &lines.last().unwrap().text;
                // "tN OK [APPENDUID validity uid] ..."
                let code = status.split_once("[APPENDUID ").unwrap_or_else(|| panic!("no APPENDUID: {status}")).1;
                let uid = code.split([' ', ']']).nth(1).unwrap();
                uids.push(uid.parse().unwrap());
            }
        }
        uids
    }

    /// UID → flags of every message of INBOX (selected read-only).
    fn flags(&mut self) -> BTreeMap<u32, BTreeSet<String>> {
        self.ok("EXAMINE INBOX");
        let mut flags = BTreeMap::new();
        for line in self.ok("UID FETCH 1:* (UID FLAGS)") {
            let Some(items) = line.text.strip_prefix("* ").filter(|rest| rest.contains(" FETCH (")) else {
                continue;
            };
            let uid = items.split_once("UID ").unwrap().1.split([' ', ')']).next().unwrap().parse().unwrap();
            let list = items.split_once("FLAGS (").unwrap().1.split_once(')').unwrap().0;
            let set = list.split_whitespace().map(str::to_owned).collect();
            assert!(flags.insert(uid, set).is_none(), "{}", line.text);
        }
        flags
    }

    /// UID → the whole message, for the given UIDs of INBOX.
    fn bodies(&mut self, uids: &str) -> BTreeMap<u32, Vec<u8>> {
        self.ok("EXAMINE INBOX");
        let mut bodies = BTreeMap::new();
        for mut line in self.ok(&format!("UID FETCH {uids} (UID BODY.PEEK[])")) {
            if line.text.starts_with("* ") && line.text.contains(" FETCH (") {
                let uid = line.text.split_once("UID ").unwrap().1.split([' ', ')']).next().unwrap().parse().unwrap();
                bodies.insert(uid, line.literals.pop().unwrap());
            }
        }
        bodies
    }
}

/// Message `n`: varied sizes, a folded header, 8-bit text, a big one.
fn message(n: usize) -> Vec<u8> {
    let mut text = format!(
        "From: Bob <bob@example.org>\r\nTo: {ACCOUNT}\r\nSubject: message {n}\r\n\
         Date: Mon, 2 Feb 2026 10:{:02}:00 +0100\r\nMessage-ID: <{n}@example.org>\r\n\
         X-Folded: a header\r\n\tfolded over two lines\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         Body of message {n}. Grüße, ñ, 日本語.\r\n",
        n % 60
    );
    for line in 0..n % 13 {
        text.push_str(&format!("line {line} of message {n}\r\n"));
    }
    if n.is_multiple_of(250) {
        text.push_str(&"a rather long line of a big message to make it heavy\r\n".repeat(4000));
    }
    text.into_bytes()
}

/// The IMAP flags message `n` is appended with.
fn initial_flags(n: usize) -> BTreeSet<&'static str> {
    let mut flags = BTreeSet::new();
    if n.is_multiple_of(5) {
        flags.insert("\\Seen");
    }
    if n.is_multiple_of(7) {
        flags.insert("\\Flagged");
    }
    if n.is_multiple_of(11) {
        flags.insert("\\Answered");
    }
    if n.is_multiple_of(13) {
        flags.insert("\\Draft");
    }
    flags
}

/// Maildir info letters for IMAP flags (sorted, as the standard wants).
fn maildir_letters(flags: &BTreeSet<&str>) -> String {
    let mut letters: Vec<char> = flags
        .iter()
        .filter_map(|flag| match *flag {
            "\\Draft" => Some('D'),
            "\\Flagged" => Some('F'),
            "\\Answered" => Some('R'),
            "\\Seen" => Some('S'),
            "\\Deleted" => Some('T'),
            _ => None,
        })
        .collect();
    letters.sort_unstable();
    letters.into_iter().collect()
}

/// Asserts byte equality, showing where the bytes part.
fn same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    let around =
        |bytes: &[u8]| String::from_utf8_lossy(&bytes[at.saturating_sub(60)..(at + 60).min(bytes.len())]).into_owned();
    panic!(
        "{what} differs at byte {at} (got {} bytes, want {}):\ngot:  {:?}\nwant: {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    );
}

/// The message without the `X-TUID` header mbsync adds to every message it
/// copies (it finds the copy by it should the run be interrupted).
fn without_tuid(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let Some(start) = text.find("\nX-TUID: ").map(|at| at + 1) else {
        return bytes.to_vec();
    };
    let end = start + text[start..].find('\n').unwrap() + 1;
    format!("{}{}", &text[..start], &text[end..]).into_bytes()
}

fn lf(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8(bytes.to_vec()).unwrap().replace("\r\n", "\n").into_bytes()
}

/// One message file of the Maildir.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Local {
    path: PathBuf,
    /// The letters after ":2," (empty when there is no info).
    letters: String,
    bytes: Vec<u8>,
}

/// The message number (from its Message-ID) → its file, for every file
/// under `cur/` and `new/`.
fn maildir(inbox: &Path) -> BTreeMap<usize, Local> {
    let mut files = BTreeMap::new();
    for sub in ["cur", "new"] {
        for entry in std::fs::read_dir(inbox.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let letters = name.split_once(":2,").map_or(String::new(), |(_, info)| info.to_owned());
            let bytes = std::fs::read(&path).unwrap();
            let header = String::from_utf8_lossy(&bytes);
            let id = header.split_once("Message-ID: <").unwrap_or_else(|| panic!("{name} has no Message-ID")).1;
            let n = id.split_once('@').unwrap().0.parse().unwrap();
            let previous = files.insert(n, Local { path, letters, bytes });
            assert!(previous.is_none(), "message {n} twice in the Maildir");
        }
    }
    files
}

/// Renames a Maildir file into `cur/` with these info letters.
fn set_letters(local: &Local, letters: &str) {
    let name = local.path.file_name().unwrap().to_str().unwrap();
    let base = name.split_once(":2,").map_or(name, |(base, _)| base);
    let target = local.path.parent().unwrap().parent().unwrap().join("cur").join(format!("{base}:2,{letters}"));
    std::fs::rename(&local.path, target).unwrap();
}

struct Mbsync {
    config: PathBuf,
    home: PathBuf,
    /// How long each run took.
    timings: RefCell<Vec<(String, Duration)>>,
}

/// What one mbsync run did: its output with the IMAP protocol trace (`-D n`).
struct Run {
    output: String,
}

impl Run {
    /// The IMAP commands mbsync sent (tags stripped).
    fn commands(&self) -> Vec<&str> {
        self.output
            .lines()
            // Pipelined ones follow "(N in progress) " on the line.
            .filter_map(|line| line.split_once(">>> ").map(|(_, command)| command))
            .map(|command| command.split_once(' ').map_or(command, |(_, rest)| rest))
            .collect()
    }

    /// Commands that change the server or fetch a message's content.
    fn transfers(&self) -> Vec<&str> {
        self.commands()
            .into_iter()
            .filter(|command| {
                let upper = command.to_ascii_uppercase();
                ["APPEND", "STORE", "EXPUNGE", "COPY", "MOVE", "BODY.PEEK[]", "BODY[]", "RFC822 ", "RFC822)"]
                    .iter()
                    .any(|word| upper.contains(word))
            })
            .collect()
    }
}

impl Mbsync {
    fn new(world: &World, port: u16, token: &str) -> Self {
        let mail = world.path().join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        let config = world.path().join("mbsyncrc");
        std::fs::write(
            &config,
            format!(
                "IMAPAccount bitmask\nHost 127.0.0.1\nPort {port}\nUser {ACCOUNT}\nPass \"{token}\"\n\
                 SSLType None\nAuthMechs LOGIN\n\n\
                 IMAPStore far\nAccount bitmask\n\n\
                 MaildirStore near\nPath {mail}/\nInbox {mail}/INBOX\n\n\
                 Channel mirror\nFar :far:\nNear :near:\nPatterns INBOX\nCreate Both\nExpunge Both\nSyncState *\n",
                mail = mail.display()
            ),
        )
        .unwrap();
        Self { config, home: world.path().to_owned(), timings: RefCell::default() }
    }

    /// `mbsync -D n -a`, which must succeed.
    fn run(&self, what: &str) -> Run {
        let started = Instant::now();
        let output = Command::new("mbsync")
            .arg("-c")
            .arg(&self.config)
            .args(["-Dn", "-a"])
            .env("HOME", &self.home)
            .output()
            .unwrap();
        let took = started.elapsed();
        let output_text = text(&output);
        assert!(output.status.success(), "mbsync ({what}) failed with {}:\n{}", output.status, tail(&output_text));
        self.timings.borrow_mut().push((what.to_owned(), took));
        Run { output: output_text }
    }

    /// `mbsync -a` on a terminal (under `script`), which must succeed: the
    /// counts of its last progress line, which mbsync prints only to a
    /// terminal and without `-D`. isync 1.4 prints "C: 1/1  B: 1/1  F: +0/0
    /// *0/0 #0/0  N: +0/0 *0/0 #0/0": channels, boxes, then for the far and
    /// the near side messages added, flag updates, messages trashed (1.5
    /// adds -N/N, expunged), each as done/to do. The map goes from "F+",
    /// "N*" and so on to the number done.
    fn counters(&self, what: &str) -> BTreeMap<String, u32> {
        let started = Instant::now();
        let output = Command::new("script")
            .arg("-qec")
            .arg(format!("mbsync -c '{}' -a", self.config.display()))
            .arg("/dev/null")
            .env("HOME", &self.home)
            .output()
            .unwrap_or_else(|error| panic!("script (util-linux) gives mbsync a terminal: {error}"));
        let output_text = text(&output);
        assert!(output.status.success(), "mbsync ({what}) failed with {}:\n{output_text}", output.status);
        self.timings.borrow_mut().push((format!("{what} (on a terminal)"), started.elapsed()));
        let last = output_text.split(['\r', '\n']).rfind(|line| line.starts_with("C: "));
        let last = last.unwrap_or_else(|| panic!("no progress line from mbsync ({what}):\n{output_text}"));
        let mut counts = BTreeMap::new();
        let mut side = "";
        for word in last.split_whitespace() {
            if let Some(name) = word.strip_suffix(':') {
                side = name;
            } else if ["F", "N"].contains(&side) {
                let (kind, numbers) = word.split_at(1);
                let (done, to_do) = numbers.split_once('/').unwrap_or_else(|| panic!("{last}"));
                assert_eq!(done, to_do, "mbsync ({what}) left work undone: {last}");
                counts.insert(format!("{side}{kind}"), done.parse().unwrap());
            }
        }
        assert!(counts.len() >= 6, "mbsync ({what}): {last}");
        counts
    }
}

/// The end of a long output, for failure messages.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn start_alice(world: &World) -> (u16, String) {
    let (imap, smtp) = (free_port(), free_port());
    world.ctl_json(&["account", "add", ACCOUNT, "--imap-port", &imap.to_string(), "--smtp-port", &smtp.to_string()]);
    let passphrase = world.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    world.ctl_json(&["account", "start", ACCOUNT, "--passphrase-file", passphrase.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), "the IMAP port accepts connections", || {
        TcpStream::connect(("127.0.0.1", imap)).is_ok()
    });
    let token = world.ctl_json(&["mail", "token", ACCOUNT])["token"].as_str().unwrap().to_owned();
    (imap, token)
}

fn no_transfers(run: &Run, what: &str) {
    assert!(run.transfers().is_empty(), "{what}: mbsync transferred {:?}", run.transfers());
}

#[test]
fn mbsync_mirrors_a_thousand_messages_and_flags_both_ways() {
    let mbsync_version = Command::new("mbsync").arg("--version").output();
    let Ok(version) = mbsync_version else {
        panic!("mbsync is missing: run scripts/setup (apt-get install isync)");
    };
    println!("{}", text(&version).trim());

    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let (port, token) = start_alice(&world);
    let mut client = Client::login(port, &token);

    // 1,000 messages on the server, with a mix of flags.
    let started = Instant::now();
    let messages: Vec<(Vec<u8>, String)> =
        (1..=MESSAGES).map(|n| (message(n), initial_flags(n).into_iter().collect::<Vec<_>>().join(" "))).collect();
    let uids = client.append_all(&messages);
    println!("1,000 APPENDs: {:.2?}", started.elapsed());
    let uid_of = |n: usize| uids[n - 1];
    let number_of: BTreeMap<u32, usize> = uids.iter().enumerate().map(|(i, uid)| (*uid, i + 1)).collect();

    // The mirror: every message byte for byte (mbsync stores LF line
    // endings in a Maildir) with its flags.
    let mbsync = Mbsync::new(&world, port, &token);
    let first = mbsync.run("first run");
    let fetched = first.transfers().iter().filter(|command| command.contains("BODY.PEEK[]")).count();
    assert_eq!(fetched, MESSAGES, "the trace shows every message fetched once");
    let inbox = world.path().join("mail/INBOX");
    let local = maildir(&inbox);
    assert_eq!(local.len(), MESSAGES, "{}", tail(&first.output));
    for n in 1..=MESSAGES {
        let file = &local[&n];
        same(&without_tuid(&file.bytes), &lf(&message(n)), &format!("message {n} in {}", file.path.display()));
        assert_eq!(file.letters, maildir_letters(&initial_flags(n)), "message {n}: {}", file.path.display());
    }

    // A second run with no change transfers nothing and changes nothing.
    let before = client.flags();
    let again = mbsync.run("no change");
    no_transfers(&again, "a run with no change");
    assert_eq!(maildir(&inbox), local, "a run with no change touched the Maildir");
    assert_eq!(client.flags(), before, "a run with no change touched the server");

    // Flags changed locally reach the server: 1 gets \Seen and \Flagged,
    // 10 loses \Seen.
    set_letters(&local[&1], "FS");
    set_letters(&local[&10], "");
    let run = mbsync.run("local flags");
    assert_eq!(run.transfers().len(), 2, "two STOREs: {:?}", run.commands());
    let flags = client.flags();
    let flags_of = |n: usize| flags[&uid_of(n)].iter().map(String::as_str).collect::<BTreeSet<&str>>();
    assert_eq!(flags_of(1), BTreeSet::from(["\\Flagged", "\\Seen"]), "{:?}", run.commands());
    assert_eq!(flags_of(10), BTreeSet::new(), "{:?}", run.commands());
    for n in (2..=MESSAGES).filter(|n| *n != 10) {
        assert_eq!(flags_of(n), initial_flags(n), "message {n} changed on the server");
    }

    // Flags changed on the server reach the Maildir: 2 gets \Flagged, 15
    // loses \Seen.
    client.ok("SELECT INBOX");
    client.ok(&format!("UID STORE {} +FLAGS (\\Flagged)", uid_of(2)));
    client.ok(&format!("UID STORE {} -FLAGS (\\Seen)", uid_of(15)));
    client.ok("CLOSE");
    let counters = mbsync.counters("server flags");
    let updated: Vec<_> = counters.iter().filter(|(_, count)| **count > 0).collect();
    assert_eq!(updated, [(&"N*".to_owned(), &2)], "two flag updates in the Maildir, nothing else: {counters:?}");
    let local = maildir(&inbox);
    assert_eq!(local[&2].letters, "F", "{}", local[&2].path.display());
    assert_eq!(local[&15].letters, "", "{}", local[&15].path.display());
    assert_eq!(local[&1].letters, "FS");
    assert_eq!(local[&10].letters, "");

    // A message delivered into the Maildir goes up to the server.
    let new = message(MESSAGES + 1);
    std::fs::write(inbox.join("new/1770000000.local-delivery.testhost"), lf(&new)).unwrap();
    let run = mbsync.run("local new message");
    assert!(matches!(run.transfers()[..], [append] if append.starts_with("APPEND")), "{:?}", run.commands());
    let flags = client.flags();
    assert_eq!(flags.len(), MESSAGES + 1, "{:?}", run.commands());
    let (&new_uid, _) = flags.iter().find(|(uid, _)| !number_of.contains_key(uid)).unwrap();
    assert!(new_uid > *uids.iter().max().unwrap(), "the new message's UID {new_uid}");
    let body = client.bodies(&new_uid.to_string());
    same(&without_tuid(&body[&new_uid]), &new, "the uploaded message on the server");
    let local = maildir(&inbox);
    assert_eq!(local.len(), MESSAGES + 1);

    // Deletions go both ways too (Expunge Both): 3 deleted locally, 4
    // deleted and expunged on the server.
    std::fs::remove_file(&local[&3].path).unwrap();
    client.ok("SELECT INBOX");
    client.ok(&format!("UID STORE {} +FLAGS (\\Deleted)", uid_of(4)));
    client.ok("EXPUNGE");
    let run = mbsync.run("deletions");
    let flags = client.flags();
    assert_eq!(flags.len(), MESSAGES - 1, "{:?}", run.commands());
    assert!(!flags.contains_key(&uid_of(3)), "3 is still on the server: {:?}", run.commands());
    let local = maildir(&inbox);
    assert_eq!(local.len(), MESSAGES - 1, "{:?}", run.commands());
    assert!(!local.contains_key(&4), "4 is still in the Maildir");

    // And once more: nothing to do on either side.
    let before = client.flags();
    let last = mbsync.run("no change at the end");
    no_transfers(&last, "the last run");
    assert_eq!(maildir(&inbox), local, "the last run touched the Maildir");
    assert_eq!(client.flags(), before, "the last run touched the server");
    let counters = mbsync.counters("no change, counted");
    assert!(counters.values().all(|count| *count == 0), "a run with no change: {counters:?}");
    for (what, took) in mbsync.timings.borrow().iter() {
        println!("mbsync {what}: {took:.2?}");
    }
    println!("{} IMAP commands in the last run", last.commands().len());
}
