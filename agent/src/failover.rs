//! One gRPC channel to whichever of several control planes answers (`--server a,b,c`,
//! control planes sharing one etcd). The channel holds one control plane at a time, so
//! a watch and the calls beside it go to the same one; every second the agent checks
//! that the current one still accepts connections and, when it does not, moves the
//! channel to the first one that does. Calls in flight on the dead one fail and their
//! callers retry as they do after any outage: watches resume from their last revision,
//! which every control plane on the same etcd serves.

use std::time::Duration;

use tokio::{net::TcpStream, sync::mpsc::Sender};
use tonic::transport::{Channel, Endpoint, channel::Change};

/// How often the current control plane is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a connection attempt may take before the control plane counts as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A channel to one of `endpoints` (URL, endpoint) at a time, in order of preference;
/// with a single endpoint, simply a lazily connecting channel to it.
pub fn channel(mut endpoints: Vec<(String, Endpoint)>) -> Channel {
    if endpoints.len() == 1
        && let Some((_, endpoint)) = endpoints.pop()
    {
        return endpoint.connect_lazy();
    }
    let (channel, changes) = Channel::balance_channel::<usize>(endpoints.len().max(1));
    tokio::spawn(follow(endpoints, changes));
    channel
}

async fn follow(endpoints: Vec<(String, Endpoint)>, changes: Sender<Change<usize, Endpoint>>) {
    let mut current: Option<usize> = None;
    loop {
        let keep = match current {
            Some(i) => answers(&endpoints[i].0).await,
            None => false,
        };
        if !keep {
            let mut next = None;
            for (i, (url, _)) in endpoints.iter().enumerate() {
                if Some(i) != current && answers(url).await {
                    next = Some(i);
                    break;
                }
            }
            // With nobody answering the channel stays where it is: calls fail as they
            // would with one control plane, and the next check tries again.
            if let Some(next) = next {
                if changes
                    .send(Change::Insert(next, endpoints[next].1.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(old) = current {
                    tracing::warn!(
                        from = %endpoints[old].0,
                        to = %endpoints[next].0,
                        "the control plane stopped answering: using another"
                    );
                    if changes.send(Change::Remove(old)).await.is_err() {
                        return;
                    }
                } else {
                    tracing::info!(server = %endpoints[next].0, "using this control plane");
                }
                current = Some(next);
            }
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Whether the control plane at `url` (`https://host:port[/...]`) accepts a TCP
/// connection now.
async fn answers(url: &str) -> bool {
    let Some(address) = host_port(url) else {
        return false;
    };
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

fn host_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/')
        .next()
        .filter(|authority| !authority.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_of_a_url() {
        assert_eq!(
            host_port("https://198.18.0.1:6444"),
            Some("198.18.0.1:6444")
        );
        assert_eq!(host_port("https://[::1]:6444/x"), Some("[::1]:6444"));
        assert_eq!(host_port("https://"), None);
    }
}
