//! What a hollow container does, read from its command as a shell would run it: a
//! hollow node runs nothing, but a Job's pods must end, after a while and with an exit
//! code, as they would on a real node.
//!
//! `sh -c SCRIPT` (also `/bin/sh`, `bash`, `ash`, `dash`): the script's statements,
//! separated by newlines, `;`, `&&` and `||` (with the shell's meaning), where
//! `sleep N` takes N seconds, `exit N` ends the container with code N, `false` fails,
//! and anything else (`echo`, `date`, `perl ...`) succeeds at once. A command that is not
//! a shell script is one such statement (`sleep 5`, `perl -e ...`); no command at all
//! (the image's own) succeeds at once.

use std::time::Duration;

/// How a container run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ending {
    pub after: Duration,
    pub exit_code: i32,
}

const SHELLS: &[&str] = &["sh", "bash", "ash", "dash"];

/// The ending of a container with `command` and `args` (Kubernetes' fields).
pub fn ending(command: &[String], args: &[String]) -> Ending {
    let argv: Vec<&str> = command.iter().chain(args).map(String::as_str).collect();
    let shell = argv
        .first()
        .map(|program| program.rsplit('/').next().unwrap_or(program))
        .is_some_and(|program| SHELLS.contains(&program));
    match argv.as_slice() {
        [_, "-c", script, ..] if shell => run_script(script),
        [] => Ending {
            after: Duration::ZERO,
            exit_code: 0,
        },
        words => {
            let mut after = Duration::ZERO;
            match statement(words, &mut after) {
                Status::Exit(code) | Status::Done(code) => Ending {
                    after,
                    exit_code: code,
                },
            }
        }
    }
}

enum Status {
    /// The statement ran with this status.
    Done(i32),
    /// `exit`: the script ends here.
    Exit(i32),
}

fn run_script(script: &str) -> Ending {
    let mut after = Duration::ZERO;
    let mut last = 0;
    for line in script.split(['\n', ';']) {
        // `a && b || c`: each next statement runs if the status so far says so.
        let mut rest = line.trim();
        let mut run_next = true;
        while !rest.is_empty() {
            let (current, op, tail) = split_operator(rest);
            if run_next {
                let words: Vec<&str> = current.split_whitespace().collect();
                match statement(&words, &mut after) {
                    Status::Exit(code) => {
                        return Ending {
                            after,
                            exit_code: code,
                        };
                    }
                    Status::Done(code) => last = code,
                }
            }
            run_next = match op {
                Some("&&") => last == 0,
                Some("||") => last != 0,
                _ => true,
            };
            rest = tail;
        }
    }
    Ending {
        after,
        exit_code: last,
    }
}

/// The statement before the first `&&` or `||`, the operator, and what follows it.
fn split_operator(text: &str) -> (&str, Option<&'static str>, &str) {
    let and = text.find("&&");
    let or = text.find("||");
    let (at, op) = match (and, or) {
        (Some(a), Some(o)) if o < a => (o, "||"),
        (Some(a), _) => (a, "&&"),
        (None, Some(o)) => (o, "||"),
        (None, None) => return (text.trim(), None, ""),
    };
    (text[..at].trim(), Some(op), text[at + 2..].trim())
}

fn statement(words: &[&str], after: &mut Duration) -> Status {
    match words {
        [] => Status::Done(0),
        ["sleep", seconds, ..] => match seconds.trim_end_matches('s').parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => {
                *after += Duration::from_secs_f64(s);
                Status::Done(0)
            }
            _ => Status::Done(1),
        },
        ["exit"] => Status::Exit(0),
        ["exit", code, ..] => Status::Exit(code.parse().unwrap_or(2)),
        ["false", ..] => Status::Done(1),
        _ => Status::Done(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> (u64, i32) {
        let command: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let ending = ending(&command, &[]);
        (ending.after.as_secs(), ending.exit_code)
    }

    #[test]
    fn scripts_take_their_sleeps_and_end_with_their_exit_code() {
        assert_eq!(run(&["sh", "-c", "sleep 2; exit 3"]), (2, 3));
        assert_eq!(
            run(&[
                "/bin/sh",
                "-c",
                "date; echo Hello from the Kubernetes cluster"
            ]),
            (0, 0)
        );
        assert_eq!(run(&["bash", "-c", "sleep 1 && false"]), (1, 1));
        assert_eq!(run(&["sh", "-c", "false && sleep 5 || exit 4"]), (0, 4));
        assert_eq!(run(&["sh", "-c", "true || exit 4\nsleep 1"]), (1, 0));
        assert_eq!(
            run(&["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]),
            (0, 0)
        );
        assert_eq!(run(&["sleep", "7"]), (7, 0));
        assert_eq!(run(&[]), (0, 0));
    }
}
