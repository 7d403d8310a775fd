"""What runs inside the tiny guest: busybox init's table and the boot scripts, as text.

Kept as Python strings (not package data) so that the image's content key, a hash of the builder's
sources, covers them. The guest is a busybox userland in an initramfs: `rc` mounts the basics,
has hotplugged vCPUs onlined, loads the drivers the cloud kernel has as modules, applies the
cloud-init NoCloud seed (hostname, users' SSH keys, runcmd: the subset KubeVirt's examples use),
runs DHCP on every NIC, starts dropbear, acpid (the power button powers off) and the guest
agent, then busybox init puts a login on the serial console. `poweroff`, `reboot` and a panic
(`echo c > /proc/sysrq-trigger`, reported through pvpanic) are the guest's own.
"""

from __future__ import annotations

from typing import Final

DEFAULT_HOSTNAME: Final = "tiny-linux"
# Who gets cloud-config's top-level ssh_authorized_keys (Cirros has "cirros").
DEFAULT_USER: Final = "tiny"

INITTAB: Final = """\
::sysinit:/etc/rc
ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/rc.shutdown
"""

# Runs once at boot, before the console login. Each step says what it did on the console: the
# tests (and a user at `virtbus console`) read these lines.
RC: Final = r"""#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /var/log /var/run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/sysrq
uevent /etc/uevent &
for m in $(cat /etc/modules); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
hostname -F /etc/hostname
ip link set lo up
/etc/cloud-init
hostname -F /etc/hostname
for dev in /sys/class/net/*; do
  nic=${dev##*/}
  [ "$nic" = lo ] && continue
  ip link set "$nic" up
  udhcpc -i "$nic" -s /etc/udhcpc.script -x "hostname:$(hostname)" -t 5 -T 1 -A 5 -b -S
done
mkdir -p /etc/dropbear
dropbear -R -s -p 22
acpid -c /etc/acpi -l /var/log/acpid.log
for port in /sys/class/virtio-ports/*; do
  [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
  qemu-ga -d -m virtio-serial -p "/dev/${port##*/}" -f /run/qemu-ga.pid
done
if [ -s /run/cloud-init/runcmd ]; then
  (sh /run/cloud-init/runcmd > /var/log/cloud-init-output.log 2>&1;
   echo "cloud-init: runcmd exited $?" > /dev/console) &
fi
echo "tiny-linux: booted $(hostname) ($(uname -r))" > /dev/console
"""

# busybox `uevent` runs this for each kernel uevent: a hotplugged vCPU arrives offline, and is
# brought online as distributions' udev rules do (memory is onlined by the kernel: `build.py`).
UEVENT: Final = r"""#!/bin/sh
[ "$ACTION/$SUBSYSTEM" = add/cpu ] && [ -w "/sys$DEVPATH/online" ] || exit 0
[ "$(cat "/sys$DEVPATH/online")" = 1 ] || echo 1 > "/sys$DEVPATH/online"
"""

RC_SHUTDOWN: Final = r"""#!/bin/sh
echo "tiny-linux: shutting down" > /dev/console
kill $(cat /run/qemu-ga.pid 2>/dev/null) 2>/dev/null
sync
"""

UDHCPC: Final = r"""#!/bin/sh
# busybox udhcpc calls this with the lease in its environment.
case "$1" in
deconfig)
  ip addr flush dev "$interface"
  ip link set "$interface" up
  ;;
bound|renew)
  ip addr flush dev "$interface"
  ip addr add "$ip/$mask" dev "$interface"
  for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
  : > /etc/resolv.conf
  [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
  for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
  echo "udhcpc: $interface $ip/$mask" > /dev/console
  ;;
esac
"""

# busybox acpid runs /etc/acpi/PWRF/00000080 when the ACPI power button is pressed (`virsh
# shutdown`, a graceful stop).
POWER_BUTTON: Final = """#!/bin/sh
echo "tiny-linux: power button pressed" > /dev/console
poweroff
"""

# qemu-ga's guest-shutdown (libvirt's agent reboot, `virtbus soft-reboot`) runs `/sbin/shutdown
# -h -P|-H|-r +0 MESSAGE`; busybox has no shutdown, so this one maps it to its applets.
SHUTDOWN: Final = """#!/bin/sh
case " $* " in
*" -r "*) exec reboot ;;
*" -H "*) exec halt ;;
*) exec poweroff ;;
esac
"""

# Finds the NoCloud seed (any block device holding meta-data or user-data), then applies it.
CLOUD_INIT: Final = r"""#!/bin/sh
seed=/run/cloud-init/seed
mkdir -p $seed
found=""
for dev in /dev/vd* /dev/sd* /dev/sr*; do
  [ -b "$dev" ] || continue
  mount -o ro "$dev" $seed 2>/dev/null || continue
  if [ -f $seed/meta-data ] || [ -f $seed/user-data ]; then found=$dev; break; fi
  umount $seed
done
[ -n "$found" ] || { echo "cloud-init: no NoCloud seed" > /dev/console; exit 0; }
# KubeVirt writes meta-data as YAML or JSON: either way one `local-hostname` key and its value.
name=$(tr ',{}' '\n\n\n' < $seed/meta-data 2>/dev/null | tr -d "\"'" |
       sed -n 's/^[ ]*local-hostname:[ ]*//p' | head -n1)
[ -n "$name" ] && echo "$name" > /etc/hostname
if head -n1 $seed/user-data 2>/dev/null | grep -q '^#!'; then
  cp $seed/user-data /run/cloud-init/runcmd
elif [ -f $seed/user-data ]; then
  awk -f /etc/cloud-config.awk $seed/user-data > /run/cloud-init/plan
  tab=$(printf '\t')
  while IFS="$tab" read -r kind who value; do
    case $kind in
    hostname) echo "$value" > /etc/hostname ;;
    user) add_user "$who" ;;
    key) add_user "$who"; home=$(awk -F: -v u="$who" '$1 == u {print $6}' /etc/passwd)
         mkdir -p "$home/.ssh"; echo "$value" >> "$home/.ssh/authorized_keys"
         chmod 700 "$home/.ssh"; chmod 600 "$home/.ssh/authorized_keys"
         chown -R "$who" "$home/.ssh" ;;
    run) echo "$value" >> /run/cloud-init/runcmd ;;
    esac
  done < /run/cloud-init/plan
fi
umount $seed
echo "cloud-init: applied the seed on $found" > /dev/console
"""

# A POSIX sh function the seed script sources: a user as cloud-init makes one (home, no password).
ADD_USER: Final = r"""add_user() {
  grep -q "^$1:" /etc/passwd && return
  uid=$((1000 + $(wc -l < /etc/passwd)))
  echo "$1:x:$uid:$uid::/home/$1:/bin/sh" >> /etc/passwd
  echo "$1:*:19000:0:99999:7:::" >> /etc/shadow
  echo "$1:x:$uid:" >> /etc/group
  mkdir -p "/home/$1"
  chown "$1" "/home/$1"
}
"""

# The subset of cloud-config read here, as `kind<TAB>user<TAB>value` lines for the seed script
# (user "-" when none: sh's `read` folds adjacent tabs):
# hostname, ssh_authorized_keys (the default user's), users (name, ssh_authorized_keys; "default"),
# runcmd (strings, or lists whose items are quoted for sh). Other keys are ignored.
CLOUD_CONFIG_AWK: Final = r"""
function unquote(s) {
  sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s)
  if (s ~ /^".*"$/ || s ~ /^'.*'$/) s = substr(s, 2, length(s) - 2)
  return s
}
function shq(s) { gsub(/'/, "'\\''", s); return "'" s "'" }
function flow(s,    n, i, parts, out) {  # [a, "b c"] -> 'a' 'b c'
  s = substr(s, 2, length(s) - 2)
  n = split(s, parts, ",")
  out = ""
  for (i = 1; i <= n; i++) out = out (i > 1 ? " " : "") shq(unquote(parts[i]))
  return out
}
function emit(kind, who, value) { printf "%s\t%s\t%s\n", kind, who == "" ? "-" : who, value }
function item(section, v) {
  if (section == "runcmd") emit("run", "", v ~ /^\[/ ? flow(v) : unquote(v))
  else if (section == "ssh_authorized_keys") emit("key", DEFAULT, unquote(v))
}
function list_inline(section, v,    n, i, parts) {
  v = substr(v, 2, length(v) - 2); n = split(v, parts, ",")
  for (i = 1; i <= n; i++) item(section, parts[i])
}
/^[ \t]*#/ || /^[ \t]*$/ { next }
{
  line = $0
  match(line, /^ */); indent = RLENGTH
}
indent == 0 && line ~ /^[A-Za-z_]+:/ {
  section = line; sub(/:.*/, "", section)
  value = line; sub(/^[^:]*:/, "", value); value = unquote(value)
  if (section == "hostname" && value != "") emit("hostname", "", value)
  else if (value ~ /^\[/) list_inline(section, value)
  user_indent = -1; sub_key = ""
  next
}
section == "users" {
  rest = substr(line, indent + 1)
  if (rest ~ /^- / && (user_indent < 0 || indent == user_indent)) {
    user_indent = indent; rest = substr(rest, 3); user = ""; sub_key = ""
    if (unquote(rest) == "default") { emit("user", DEFAULT, ""); next }
    match(rest, /^ */); indent = indent + 2 + RLENGTH; rest = unquote(rest)
  }
  if (rest ~ /^- /) {
    if (sub_key == "ssh_authorized_keys" && user != "") emit("key", user, unquote(substr(rest, 3)))
    next
  }
  if (rest ~ /^[A-Za-z_-]+:/) {
    sub_key = rest; sub(/:.*/, "", sub_key)
    value = rest; sub(/^[^:]*:/, "", value); value = unquote(value)
    if (sub_key == "name") { user = value; emit("user", user, "") }
    else if (sub_key == "ssh_authorized_keys" && value ~ /^\[/ && user != "") {
      v = substr(value, 2, length(value) - 2); n = split(v, parts, ",")
      for (i = 1; i <= n; i++) emit("key", user, unquote(parts[i]))
    }
  }
  next
}
{
  rest = substr(line, indent + 1)
  if (rest ~ /^- /) item(section, substr(rest, 3))
}
"""

PASSWD: Final = f"""\
root:x:0:0:root:/root:/bin/sh
{DEFAULT_USER}:x:1000:1000:{DEFAULT_USER}:/home/{DEFAULT_USER}:/bin/sh
"""
# root logs in on the serial console without a password (a test guest); dropbear refuses
# passwords (-s), so over ssh only the keys cloud-init installed let anyone in.
SHADOW: Final = f"""\
root::19000:0:99999:7:::
{DEFAULT_USER}:*:19000:0:99999:7:::
"""
GROUP: Final = f"""\
root:x:0:
{DEFAULT_USER}:x:1000:
"""


def files(*, modules: list[str]) -> dict[str, tuple[str, int]]:
    """The guest's own files: path -> (text, mode). `modules` in the order they load."""
    seed = CLOUD_INIT.replace("#!/bin/sh\n", "#!/bin/sh\n. /etc/add-user\n", 1)
    return {
        "etc/inittab": (INITTAB, 0o644),
        "etc/rc": (RC, 0o755),
        "etc/rc.shutdown": (RC_SHUTDOWN, 0o755),
        "etc/uevent": (UEVENT, 0o755),
        "etc/udhcpc.script": (UDHCPC, 0o755),
        "etc/acpi/PWRF/00000080": (POWER_BUTTON, 0o755),
        "sbin/shutdown": (SHUTDOWN, 0o755),
        "etc/cloud-init": (seed, 0o755),
        "etc/cloud-config.awk": (CLOUD_CONFIG_AWK.replace("DEFAULT", f'"{DEFAULT_USER}"'), 0o644),
        "etc/add-user": (ADD_USER, 0o644),
        "etc/modules": ("".join(f"{m}\n" for m in modules), 0o644),
        "etc/hostname": (f"{DEFAULT_HOSTNAME}\n", 0o644),
        "etc/passwd": (PASSWD, 0o644),
        "etc/shadow": (SHADOW, 0o600),
        "etc/group": (GROUP, 0o644),
        "etc/shells": ("/bin/sh\n", 0o644),
        "etc/issue": ("virtbus tiny-linux \\n (\\l)\n\n", 0o644),
        "etc/profile": ("export PATH=/sbin:/bin:/usr/sbin:/usr/bin\n", 0o644),
    }
