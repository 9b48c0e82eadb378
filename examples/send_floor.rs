//! The floor under the live bench: what the kernel alone costs to hand one
//! small frame to each of many loopback sockets, with no gateway at all.
//!
//! This process accepts `--sockets N` loopback connections from a reader
//! child (itself, started with `taskset -c 1`), then `--rounds` times writes
//! one `--bytes`-long frame to every socket from this one thread: one
//! blocking `write` each, nothing else. The reader notes when each frame
//! arrives. Printed: the delay from the first write to each socket's frame
//! (p50, p99, last) and this process's CPU per round.
//!
//! `live_bench`'s figures for the gateway can be no better than these: run
//! `taskset -c 0 target/release/examples/send_floor --sockets 10000` beside
//! it (docs/performance.md). Needs N + a few file descriptors: raise
//! `ulimit -n` first.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

#[derive(Parser)]
#[command(about = "The kernel's cost of one small write to each of many loopback sockets")]
struct Cli {
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Frame size; a `userVisitAdded` frame is about this.
    #[arg(long, default_value_t = 256)]
    bytes: usize,
    /// Run as the reading side, connected to this address.
    #[arg(long, hide = true)]
    reader: Option<String>,
}

fn micros_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn main() {
    let cli = Cli::parse();
    match &cli.reader {
        Some(address) => read_side(address, &cli),
        None => write_side(&cli),
    }
}

fn write_side(cli: &Cli) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let mut reader = Command::new("taskset")
        .args(["-c", "1"])
        .arg(std::env::current_exe().unwrap())
        .args(["--reader", &address])
        .args(["--sockets", &cli.sockets.to_string()])
        .args(["--rounds", &cli.rounds.to_string()])
        .args(["--bytes", &cli.bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("taskset and this example's binary");
    let mut sockets: Vec<TcpStream> = (0..cli.sockets)
        .map(|_| {
            let (s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut frame = vec![b'x'; cli.bytes];
    let mut delays = Vec::new();
    let cpu_before = cpu_ms();
    for _ in 0..cli.rounds {
        std::thread::sleep(Duration::from_millis(200));
        // The round's start travels in the frame: the reader measures from it.
        let start = format!("{:020}", micros_now());
        frame[..20].copy_from_slice(start.as_bytes());
        for s in &mut sockets {
            s.write_all(&frame).unwrap();
        }
        delays.push(lines.next().unwrap().unwrap());
    }
    let cpu = (cpu_ms() - cpu_before) as f64 / cli.rounds as f64;
    let field = |i: usize| -> Vec<f64> {
        let mut v: Vec<f64> = delays
            .iter()
            .map(|l| l.split(' ').nth(i).unwrap().parse().unwrap())
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (p50, p99, last) = (field(0), field(1), field(2));
    println!(
        "send_floor: sockets={} bytes={} rounds={} delay_p50_ms={:.1} delay_p99_ms={:.1} last_socket_median_ms={:.1} writer_cpu_ms_per_round={:.0}",
        cli.sockets,
        cli.bytes,
        cli.rounds,
        p50[p50.len() / 2],
        p99[p99.len() / 2],
        last[last.len() / 2],
        cpu
    );
    let _ = reader.wait();
}

/// This process's user and system CPU, from /proc (10 ms ticks).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10
}

fn read_side(address: &str, cli: &Cli) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut sockets = Vec::with_capacity(cli.sockets);
        for _ in 0..cli.sockets {
            sockets.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        println!("ready");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
        for socket in sockets {
            let tx = tx.clone();
            let bytes = cli.bytes;
            tokio::spawn(async move {
                let mut buffer = vec![0u8; bytes];
                loop {
                    let mut got = 0;
                    while got < bytes {
                        socket.readable().await.unwrap();
                        match socket.try_read(&mut buffer[got..]) {
                            Ok(0) => return,
                            Ok(n) => got += n,
                            Err(_) => continue,
                        }
                    }
                    let start: u128 = std::str::from_utf8(&buffer[..20]).unwrap().parse().unwrap();
                    let _ = tx.send((micros_now() - start) as f64 / 1000.0);
                }
            });
        }
        for _ in 0..cli.rounds {
            let mut delays = Vec::with_capacity(cli.sockets);
            while delays.len() < cli.sockets {
                delays.push(rx.recv().await.unwrap());
            }
            delays.sort_by(f64::total_cmp);
            let p = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
            println!(
                "{:.2} {:.2} {:.2}",
                p(0.5),
                p(0.99),
                delays[delays.len() - 1]
            );
            std::io::stdout().flush().unwrap();
        }
    });
}
