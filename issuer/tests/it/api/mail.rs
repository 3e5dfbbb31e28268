//! Messages to buyers, as the buyer receives them: through a real SMTP
//! server on 127.0.0.1 (Debian's `python3-aiosmtpd`, storing what it takes
//! in a maildir), or as `.eml` files in the data directory. Their QR
//! pictures are read back with a real decoder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::{Server, event_on_sale, hold_seats, order, order_body, organizer};
use crate::Env;

/// An SMTP server on 127.0.0.1 that keeps every message in a maildir.
struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether Debian's aiosmtpd is here; without it the test says so loudly,
/// and fails under CI.
fn aiosmtpd() -> bool {
    let here = Command::new("/usr/bin/python3")
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !here {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3-aiosmtpd is not installed: the mail tests cannot run"
        );
        eprintln!("SKIPPED: python3-aiosmtpd is not installed (apt-get install python3-aiosmtpd)");
    }
    here
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Smtp {
    fn start(port: u16, maildir: &Path) -> Smtp {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Ready once it takes connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtp {
            child,
            maildir: maildir.to_owned(),
        }
    }
}

/// The messages in `dir` (a maildir's `new/`, or the data directory's
/// `mail/`), once there are `n` of them (at most `wait`).
fn messages(dir: &Path, n: usize, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    loop {
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        if found.len() >= n || Instant::now() > deadline {
            found.sort_by_key(|m| m.contains("paid back"));
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A message's header, unfolded.
fn header(message: &str, name: &str) -> String {
    let head = message.split("\n\n").next().unwrap().replace("\r\n", "\n");
    let mut value = None;
    for line in head.lines() {
        if let Some(v) = value.as_mut()
            && (line.starts_with(' ') || line.starts_with('\t'))
        {
            *v += line;
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_owned());
        }
    }
    value.unwrap_or_else(|| panic!("no {name} header in {message}"))
}

/// The text of a message and its PNG attachments (decoded).
fn parts(message: &str) -> (String, Vec<Vec<u8>>) {
    let message = message.replace("\r\n", "\n");
    let (head, body) = message.split_once("\n\n").unwrap();
    let content_type = header(head, "content-type");
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return (quoted_printable(body), Vec::new());
    };
    let boundary = format!("--{}", boundary.trim_matches('"'));
    let (mut text, mut pictures) = (String::new(), Vec::new());
    for part in body.split(&boundary).skip(1) {
        // After the last part: `--`.
        if part.starts_with("--") {
            break;
        }
        let Some((head, body)) = part.trim_start_matches('\n').split_once("\n\n") else {
            continue;
        };
        let ty = header(head, "content-type");
        if ty.starts_with("image/png") {
            let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            pictures.push(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            );
        } else if ty.starts_with("text/plain") {
            text = quoted_printable(body);
        }
    }
    (text, pictures)
}

fn quoted_printable(s: &str) -> String {
    let joined = s.replace("=\n", "");
    let mut out = Vec::new();
    let bytes = joined.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The ticket codes the QR pictures hold.
fn codes_in(pictures: &[Vec<u8>], tmp: &Path) -> Vec<String> {
    let mut codes: Vec<String> = pictures
        .iter()
        .enumerate()
        .flat_map(|(i, png)| {
            let path = tmp.join(format!("attached-{i}.png"));
            std::fs::write(&path, png).unwrap();
            crate::decode_png(&path).into_iter().map(|(text, _)| text)
        })
        .collect();
    codes.sort();
    codes
}

#[test]
fn a_paid_order_is_mailed_its_tickets_by_smtp_and_a_cancelled_one_is_told_of_its_refund() {
    if !aiosmtpd() {
        return;
    }
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let port = free_port();
    let smtp = Smtp::start(port, &env.path("maildir"));
    let api = Server::start_with(
        &env,
        &[
            "--smtp-url",
            &format!("smtp://127.0.0.1:{port}"),
            "--mail-from",
            "Hall of Lyon <box-office@example.org>",
        ],
    );
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-4-4", "A-4-5"]);
    let (status, paid) = order(&api, &order_body(&hold, "pm_card_visa"), "mail-1");
    assert_eq!(status, 201, "{paid}");
    let code = paid["code"].as_str().unwrap();
    let mail = messages(&smtp.maildir.join("new"), 1, Duration::from_secs(15));
    assert_eq!(mail.len(), 1, "one message for the paid order");
    let m = &mail[0];
    assert_eq!(header(m, "to"), "Ana <ana@example.org>");
    assert_eq!(
        header(m, "from"),
        "\"Hall of Lyon\" <box-office@example.org>"
    );
    assert!(header(m, "subject").contains(code), "{m}");
    let (text, pictures) = parts(m);
    assert!(text.contains("A-4-4") && text.contains("A-4-5"), "{text}");
    // The link in it opens the order.
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/api/v1/orders/"))
        .unwrap();
    let path = &link[link.find("/api/v1/").unwrap()..];
    let (status, shown) = api.call("GET", path, None, None);
    assert_eq!(
        (status, shown["code"].as_str()),
        (200, Some(code)),
        "{shown}"
    );
    // The attached pictures hold the order's signed tickets, no other.
    let mut issued: Vec<String> = paid["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap().to_owned())
        .collect();
    issued.sort();
    assert_eq!(pictures.len(), 2);
    assert_eq!(codes_in(&pictures, env.tmp.path()), issued);

    // Cancelled by the organizer: a second message says it is paid back.
    let (status, _) = api.call(
        "POST",
        &format!("/api/v1/orders/{code}/cancel"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let mail = messages(&smtp.maildir.join("new"), 2, Duration::from_secs(15));
    assert_eq!(mail.len(), 2);
    let refund = &mail[1];
    assert!(
        header(refund, "subject").contains("90.00 EUR paid back"),
        "{refund}"
    );
    let (text, pictures) = parts(refund);
    assert!(text.contains("no longer valid"), "{text}");
    assert!(pictures.is_empty());
    // Nothing is sent twice.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        messages(&smtp.maildir.join("new"), 3, Duration::ZERO).len(),
        2
    );
}

#[test]
fn a_message_waits_for_the_smtp_server_and_is_delivered_once_it_answers() {
    if !aiosmtpd() {
        return;
    }
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let port = free_port();
    let api = Server::start_with(&env, &["--smtp-url", &format!("smtp://127.0.0.1:{port}")]);
    let (e, _, _) = event_on_sale(&api, &token);
    let hold = hold_seats(&api, e, &["A-1-9"]);
    let (status, paid) = order(&api, &order_body(&hold, "pm_card_visa"), "mail-2");
    assert_eq!(status, 201, "{paid}");
    // No server yet: tried, and kept.
    std::thread::sleep(Duration::from_secs(2));
    let smtp = Smtp::start(port, &env.path("maildir"));
    let mail = messages(&smtp.maildir.join("new"), 1, Duration::from_secs(30));
    assert_eq!(mail.len(), 1, "delivered once the server answered");
    assert!(header(&mail[0], "subject").contains(paid["code"].as_str().unwrap()));
}

#[test]
fn without_smtp_messages_are_eml_files_and_a_late_payment_is_told_it_is_paid_back() {
    let env = Env::new();
    let token = organizer(&env, "Promoter");
    let api = Server::start_with(&env, &["--hold-seconds", "1"]);
    let (e, _, _) = event_on_sale(&api, &token);
    let mine = hold_seats(&api, e, &["A-2-3"]);
    let (_, pending) = order(&api, &order_body(&mine, "pm_card_late"), "late-mail");
    assert_eq!(pending["state"], "pending", "{pending}");
    // The hold lapses and another buyer takes the seat before the late
    // payment lands.
    std::thread::sleep(Duration::from_millis(1100));
    let theirs = hold_seats(&api, e, &["A-2-3"]);
    let (_, bought) = order(&api, &order_body(&theirs, "pm_card_visa"), "theirs");
    assert_eq!(bought["state"], "paid", "{bought}");
    let dir = env.data().join("mail");
    let mail = messages(&dir, 2, Duration::from_secs(20));
    assert_eq!(
        mail.len(),
        2,
        "the other buyer's tickets and the late refund"
    );
    let late = &mail[1];
    assert!(
        header(late, "subject").contains(pending["code"].as_str().unwrap()),
        "{late}"
    );
    let (text, pictures) = parts(late);
    assert!(text.contains("no tickets were issued"), "{text}");
    assert!(pictures.is_empty());
    let (_, tickets) = parts(&mail[0]);
    assert_eq!(codes_in(&tickets, env.tmp.path()).len(), 1);
}
