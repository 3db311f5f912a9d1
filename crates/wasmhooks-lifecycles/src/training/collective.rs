//! Gradient averaging across the ranks of a multi-process job: rank 0
//! listens on loopback, every other rank connects, and each step every rank
//! sends its gradient and sample count and gets back the weighted mean, so
//! all ranks take the same step and their models stay identical.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::super::LifecycleError;

/// How long a rank waits for the others before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// What ranks agree on each step.
pub trait Collective {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `values` with their mean over ranks, weighted by `weight`.
    fn all_reduce(&mut self, values: &mut [f64], weight: f64) -> Result<(), LifecycleError>;
    /// Whether `flag` is true on any rank (so all stop together, say).
    fn any(&mut self, flag: bool) -> Result<bool, LifecycleError> {
        let mut v = [f64::from(u8::from(flag))];
        self.all_reduce(&mut v, 1.0)?;
        Ok(v[0] > 0.0)
    }
}

/// A single-process job.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce(&mut self, _values: &mut [f64], _weight: f64) -> Result<(), LifecycleError> {
        Ok(())
    }
}

type Link = (BufReader<TcpStream>, BufWriter<TcpStream>);

/// Ranks over loopback TCP, rank 0 in the middle.
pub struct Tcp {
    rank: usize,
    world_size: usize,
    /// Rank 0: a link to each other rank, by rank. Others: the link to 0.
    links: Vec<Link>,
}

impl Tcp {
    /// Rank 0: binds a loopback port for the others to join.
    pub fn listen() -> Result<(TcpListener, SocketAddr), LifecycleError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| collective(0, e))?;
        let addr = listener.local_addr().map_err(|e| collective(0, e))?;
        Ok((listener, addr))
    }

    /// Rank 0: waits for the other `world_size - 1` ranks to join.
    pub fn accept(listener: TcpListener, world_size: usize) -> Result<Self, LifecycleError> {
        Self::accept_while(listener, world_size, || Ok(()))
    }

    /// Like [`Tcp::accept`], but gives up as soon as `alive` says a rank
    /// that was to join is gone (its process exited, say).
    pub fn accept_while(
        listener: TcpListener,
        world_size: usize,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Self, LifecycleError> {
        let deadline = Instant::now() + PATIENCE;
        listener
            .set_nonblocking(true)
            .map_err(|e| collective(0, e))?;
        let mut joined: Vec<Option<Link>> = (1..world_size).map(|_| None).collect();
        while joined.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| collective(0, e))?;
                    let mut link = link(stream, 0)?;
                    let rank = read_u64(&mut link.0, 0)? as usize;
                    match joined.get_mut(rank.wrapping_sub(1)) {
                        Some(slot @ None) => *slot = Some(link),
                        _ => return Err(collective(0, format!("unexpected rank {rank} joined"))),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    alive().map_err(|m| collective(0, m))?;
                    if Instant::now() > deadline {
                        return Err(collective(0, "other ranks did not join in time"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(collective(0, e)),
            }
        }
        Ok(Tcp {
            rank: 0,
            world_size,
            links: joined.into_iter().flatten().collect(),
        })
    }

    /// Any other rank: joins rank 0 at `addr`.
    pub fn join(addr: SocketAddr, rank: usize, world_size: usize) -> Result<Self, LifecycleError> {
        let deadline = Instant::now() + PATIENCE;
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(collective(rank, e)),
            }
        };
        let mut link = link(stream, rank)?;
        write_u64(&mut link.1, rank as u64, rank)?;
        link.1.flush().map_err(|e| collective(rank, e))?;
        Ok(Tcp {
            rank,
            world_size,
            links: vec![link],
        })
    }
}

impl Collective for Tcp {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce(&mut self, values: &mut [f64], weight: f64) -> Result<(), LifecycleError> {
        let rank = self.rank;
        if rank == 0 {
            let mut total = weight;
            let mut sum: Vec<f64> = values.iter().map(|v| v * weight).collect();
            for (reader, _) in &mut self.links {
                let w = read_f64(reader, rank)?;
                total += w;
                for s in &mut sum {
                    *s += read_f64(reader, rank)? * w;
                }
            }
            for (v, s) in values.iter_mut().zip(&sum) {
                *v = if total > 0.0 { s / total } else { 0.0 };
            }
            for (_, writer) in &mut self.links {
                for v in values.iter() {
                    write_f64(writer, *v, rank)?;
                }
                writer.flush().map_err(|e| collective(rank, e))?;
            }
        } else {
            let (reader, writer) = &mut self.links[0];
            write_f64(writer, weight, rank)?;
            for v in values.iter() {
                write_f64(writer, *v, rank)?;
            }
            writer.flush().map_err(|e| collective(rank, e))?;
            for v in values.iter_mut() {
                *v = read_f64(reader, rank)?;
            }
        }
        Ok(())
    }
}

fn collective(rank: usize, e: impl std::fmt::Display) -> LifecycleError {
    LifecycleError::Collective {
        rank,
        message: e.to_string(),
    }
}

fn link(stream: TcpStream, rank: usize) -> Result<Link, LifecycleError> {
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| collective(rank, e))?;
    stream.set_nodelay(true).map_err(|e| collective(rank, e))?;
    let writer = stream.try_clone().map_err(|e| collective(rank, e))?;
    Ok((BufReader::new(stream), BufWriter::new(writer)))
}

fn read_u64(r: &mut impl Read, rank: usize) -> Result<u64, LifecycleError> {
    let mut b = [0; 8];
    r.read_exact(&mut b)
        .map_err(|e| collective(rank, format!("a peer went away: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

fn read_f64(r: &mut impl Read, rank: usize) -> Result<f64, LifecycleError> {
    read_u64(r, rank).map(f64::from_bits)
}

fn write_u64(w: &mut impl Write, v: u64, rank: usize) -> Result<(), LifecycleError> {
    w.write_all(&v.to_le_bytes())
        .map_err(|e| collective(rank, e))
}

fn write_f64(w: &mut impl Write, v: f64, rank: usize) -> Result<(), LifecycleError> {
    write_u64(w, v.to_bits(), rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_zero_stops_waiting_when_a_rank_is_gone() {
        let (listener, _) = Tcp::listen().unwrap();
        let start = Instant::now();
        let err = Tcp::accept_while(listener, 2, || Err("rank 1 exited".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("rank 1 exited"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn three_ranks_agree_on_the_weighted_mean() {
        let (listener, addr) = Tcp::listen().unwrap();
        let others: Vec<_> = (1..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let mut c = Tcp::join(addr, rank, 3).unwrap();
                    let mut v = [rank as f64, 10.0];
                    c.all_reduce(&mut v, rank as f64).unwrap();
                    let stop = c.any(rank == 2).unwrap();
                    (v, stop)
                })
            })
            .collect();
        let mut zero = Tcp::accept(listener, 3).unwrap();
        let mut v = [0.0, 10.0];
        zero.all_reduce(&mut v, 1.0).unwrap();
        assert!(zero.any(false).unwrap(), "rank 2 said stop");
        // (0*1 + 1*1 + 2*2) / (1 + 1 + 2)
        assert_eq!(v, [1.25, 10.0]);
        for t in others {
            assert_eq!(t.join().unwrap(), ([1.25, 10.0], true));
        }
    }
}
