//! What a process holds in memory: for the tests that prove a process
//! never has a private key (reading /proc/PID/maps, pagemap and mem).

/// `pid` and every process below it (from /proc/*/stat).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// The readable parts of `pid`'s memory whose pages are in memory or in swap: readable
/// regions from /proc/PID/maps, cut to runs of pages that /proc/PID/pagemap marks present
/// or swapped (other pages read as zeros, and allocators reserve gigabytes of those).
fn resident_regions(pid: u32) -> Vec<(u64, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    const PAGE: u64 = 4096;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut runs = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next().unwrap(), fields.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut entries = vec![0u8; ((end - start) / PAGE * 8) as usize];
        if pagemap.seek(SeekFrom::Start(start / PAGE * 8)).is_err() || pagemap.read_exact(&mut entries).is_err() {
            // No page information: read all of it.
            runs.push((start, end));
            continue;
        }
        let mut run: Option<u64> = None;
        for (i, e) in entries.chunks_exact(8).enumerate() {
            let page = start + i as u64 * PAGE;
            let in_use = u64::from_le_bytes(e.try_into().unwrap()) >> 62 != 0;
            match (in_use, run) {
                (true, None) => run = Some(page),
                (false, Some(from)) => {
                    runs.push((from, page));
                    run = None;
                }
                _ => {}
            }
        }
        runs.extend(run.map(|from| (from, end)));
    }
    runs
}

/// Which of `needles` occur in the readable memory of `pid` (/proc/PID/maps, pagemap and mem;
/// regions that cannot be read are skipped), and how many bytes were read.
pub fn scan_memory(pid: u32, needles: &[&[u8]]) -> (Vec<bool>, usize) {
    use std::io::{Read, Seek, SeekFrom};
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let longest = needles.iter().map(|n| n.len()).max().unwrap();
    let mut found = vec![false; needles.len()];
    let mut read = 0;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in resident_regions(pid) {
        let mut at = start;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            if mem.seek(SeekFrom::Start(at)).is_err() {
                break;
            }
            let Ok(n) = mem.read(&mut buf[..want]) else { break };
            if n == 0 {
                break;
            }
            read += n;
            let chunk = &buf[..n];
            for (i, needle) in needles.iter().enumerate() {
                if !found[i] {
                    found[i] = chunk.windows(needle.len()).any(|w| w[0] == needle[0] && w == *needle);
                }
            }
            // Step back so that a needle across two reads is seen.
            at += if n as u64 == end - at { n as u64 } else { (n - longest.min(n - 1)) as u64 };
        }
    }
    (found, read)
}

/// What betrays an ECDSA P-256 private key file's key in memory: its scalar
/// in either byte order, and its PKCS#8 DER.
pub fn p256_key_needles(key: &std::path::Path) -> Vec<Vec<u8>> {
    let der = super::run(std::process::Command::new("openssl").args(["pkey", "-outform", "DER", "-in"]).arg(key)).stdout;
    let at = der.windows(5).position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20]).expect("an ECPrivateKey in the PKCS#8 key") + 5;
    let scalar = der[at..at + 32].to_vec();
    let reversed: Vec<u8> = scalar.iter().rev().copied().collect();
    vec![scalar, reversed, der]
}
