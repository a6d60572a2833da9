//! QEMU guests for the end-to-end tests: Debian's kernel (unpacked by
//! `.ci/run`) with a busybox initramfs whose `/init` a test writes, booted
//! under TCG with its NIC on a weft VM endpoint; the serial console is
//! collected and waited on, bounded, for the lines the guest prints.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{has_tool, require, write_script};

/// Where `.ci/run` unpacks Debian's kernel package for the QEMU guests
/// (`boot/vmlinuz-*`, `lib/modules/*/kernel/...`); `WEFT_GUEST_KERNEL`
/// overrides it.
pub const GUEST_KERNEL_DIR: &str = "/var/cache/weft-tests/kernel";

/// The virtio modules a guest loads, in dependency order.
pub const GUEST_MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// How long a guest may take to boot and say what it saw: a TCG boot is
/// ~7 s alone, several times that on two busy cores.
pub const GUEST_DEADLINE: Duration = Duration::from_secs(150);

/// A kernel and a busybox initramfs whose `/init` runs `script` after
/// loading the virtio modules, or None (skip) when QEMU, cpio or the
/// unpacked kernel is missing.
pub struct GuestKit {
    kernel: PathBuf,
    initrd: PathBuf,
}

impl GuestKit {
    pub fn build(dir: &Path, name: &str, script: &str) -> Option<GuestKit> {
        let kernel_dir = std::env::var("WEFT_GUEST_KERNEL").unwrap_or(GUEST_KERNEL_DIR.into());
        let kernel = std::fs::read_dir(Path::new(&kernel_dir).join("boot"))
            .ok()
            .and_then(|entries| {
                entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
            });
        if !require(
            has_tool("qemu-system-x86_64", "--version") && has_tool("cpio", "--version"),
            "needs qemu-system-x86 and cpio",
        ) || !require(
            kernel.is_some(),
            &format!("needs a guest kernel unpacked in {kernel_dir} (see .ci/run)"),
        ) {
            return None;
        }
        let root = dir.join(format!("{name}-root"));
        super::busybox_rootfs(&root);
        let modules = root.join("lib/modules");
        std::fs::create_dir_all(&modules).expect("guest modules dir");
        for module in GUEST_MODULES {
            let file = format!("{module}.ko");
            let found = super::run(Command::new("find").args([
                &format!("{kernel_dir}/lib/modules"),
                "-name",
                &file,
            ]));
            if let Some(path) = super::stdout(&found).lines().next() {
                std::fs::copy(path, modules.join(&file)).expect("copying a module");
            }
        }
        write_script(&root.join("init"), script);
        let initrd = dir.join(format!("{name}-initrd.cpio"));
        let packed = super::run(Command::new("sh").args([
            "-c",
            &format!(
                "cd {} && find . | cpio -o -H newc --quiet > {}",
                root.display(),
                initrd.display()
            ),
        ]));
        assert!(packed.status.success(), "cpio: {}", super::show(&packed));
        Some(GuestKit {
            kernel: kernel.expect("checked above"),
            initrd,
        })
    }
}

/// A running QEMU guest whose serial console is collected line by line.
pub struct Guest {
    child: std::process::Child,
    console: Arc<Mutex<String>>,
}

impl Guest {
    /// Boot `kit` with its NIC on the stream socket `socket` and `mac`.
    pub fn boot(kit: &GuestKit, socket: &str, mac: &str) -> Guest {
        let netdev = format!("stream,id=n0,server=off,addr.type=unix,addr.path={socket}");
        Guest::boot_on(kit, &netdev, mac)
    }

    /// Boot `kit` with its NIC on the QEMU netdev `netdev` (id `n0`).
    pub fn boot_on(kit: &GuestKit, netdev: &str, mac: &str) -> Guest {
        let device = format!("virtio-net-pci,netdev=n0,mac={mac},romfile=");
        let mut child = Command::new("timeout")
            .args([
                "-k",
                "2",
                "300",
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-m",
                "256",
            ])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(&kit.initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-netdev", netdev, "-device", &device])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("starting qemu-system-x86_64");
        let console = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                    console.lock().expect("console").push_str(&text);
                }
            });
        }
        Guest { child, console }
    }

    /// Wait (bounded) for a console line starting with `marker`; its rest.
    pub fn wait_for(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + GUEST_DEADLINE;
        loop {
            if let Some(rest) = self.line(marker) {
                return rest;
            }
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "no {marker:?} from the guest (exited: {exited:?}); its console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn line(&self, marker: &str) -> Option<String> {
        // Anywhere in the line: the firmware's escape sequences may
        // precede the first line the guest prints.
        self.console().lines().find_map(|l| {
            l.find(marker)
                .map(|at| l[at + marker.len()..].trim().to_owned())
        })
    }

    pub fn console(&self) -> String {
        self.console.lock().expect("console").clone()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        super::kill_group(&mut self.child);
    }
}

/// The guest's `/init`: load the virtio modules, take a DHCP lease (asking
/// for the host name `guest`) and print it, then resolve `peer` with the lease's DNS server and ping it
/// (retrying while the peer boots), then answer `weft-vm-hello` on TCP
/// port 8080 and wait to be pinged.
pub fn guest_init(peer: &str) -> String {
    let modules = GUEST_MODULES.join(" ");
    format!(
        r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in {modules}; do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
cat > /lease.sh <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip route replace default via "$router" dev "$interface"
    echo "ip=$ip mask=$mask router=$router dns=$dns hostname=$hostname domain=$domain mtu=$mtu" > /lease
    echo "$dns" > /dns
    ;;
esac
SCRIPT
chmod +x /lease.sh
ip link set lo up
ip link set eth0 up
if udhcpc -i eth0 -f -q -n -t 30 -T 1 -x hostname:guest -s /lease.sh >/dev/null 2>&1; then
  echo "WEFT-LEASE $(cat /lease)"
else
  echo "WEFT-NO-LEASE"
fi
i=0
while [ $i -lt 60 ]; do
  addr=$(nslookup {peer} $(cat /dns) 2>/dev/null | sed -n 's/^Address: *\([0-9.]*\)$/\1/p' | tail -1)
  if [ -n "$addr" ] && ping -c 1 -W 1 "$addr" >/dev/null 2>&1; then
    echo "WEFT-REACHED {peer} $addr"
    break
  fi
  i=$((i+1))
  sleep 1
done
[ $i -lt 60 ] || echo "WEFT-UNREACHABLE {peer} $addr"
(while true; do echo weft-vm-hello | nc -l -p 8080 >/dev/null 2>&1; done) &
echo "WEFT-READY"
sleep 600
"#
    )
}
