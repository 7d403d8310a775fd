"""The guest agent's answers (libvirt's flat virDomainGetGuestInfo keys) in KubeVirt's shapes.

The real agent answering through the real node is tested on QEMU in test_guest_qemu.py.
"""

from __future__ import annotations

from workers.guestagent import filesystems, guest_os_info, users

# What libvirt 9 returns for a guest with one user and two filesystems (keys as documented).
INFO = {
    "hostname": "guest-one", "os.id": "debian", "os.name": "Debian GNU/Linux",
    "os.pretty-name": "Debian GNU/Linux 12", "os.version-id": "12",
    "os.kernel-release": "6.1.0-28-cloud-amd64", "os.machine": "x86_64",
    "timezone.name": "UTC", "timezone.offset": 0,
    "user.count": 1, "user.0.name": "root", "user.0.login-time": 1765000000123,
    "fs.count": 2, "fs.0.name": "vda1", "fs.0.mountpoint": "/", "fs.0.fstype": "ext4",
    "fs.0.total-bytes": 1000, "fs.0.used-bytes": 250, "fs.0.disk.count": 1,
    "fs.0.disk.0.alias": "vda", "fs.1.name": "tmpfs", "fs.1.mountpoint": "/run",
    "fs.1.fstype": "tmpfs",
}  # fmt: skip


def test_users_filesystems_and_os_info_are_kubevirts_objects() -> None:
    assert users(INFO) == [{"userName": "root", "loginTime": 1765000000.123}]
    assert filesystems(INFO) == [
        {"diskName": "vda1", "mountPoint": "/", "fileSystemType": "ext4", "usedBytes": 250,
         "totalBytes": 1000},
        {"diskName": "tmpfs", "mountPoint": "/run", "fileSystemType": "tmpfs", "usedBytes": 0,
         "totalBytes": 0},
    ]  # fmt: skip
    info = guest_os_info(INFO, version="7.2.19")
    assert info == {
        "guestAgentVersion": "7.2.19",
        "hostname": "guest-one",
        "os": {"name": "Debian GNU/Linux", "kernelRelease": "6.1.0-28-cloud-amd64",
               "prettyName": "Debian GNU/Linux 12", "versionId": "12", "machine": "x86_64",
               "id": "debian"},
        "timezone": "UTC, 0",
        "userList": [{"userName": "root", "loginTime": 1765000000.123}],
        "fsInfo": {"disks": filesystems(INFO)},
    }  # fmt: skip
    assert users({}) == [] and filesystems({"fs.count": 0}) == []
