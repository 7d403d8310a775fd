/* A UDP echo for the tiny guest (busybox there has no UDP server), answering on port 7 with
 * "guest:" and the datagram. No libc: raw x86-64 Linux syscalls, so the binary is small enough
 * to travel base64'd in a cloud-init runcmd (tests/qemu/test_guest_qemu.py builds it). */

static long sys6(long n, long a, long b, long c, long d, long e, long f) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

enum { SOCKET = 41, SENDTO = 44, RECVFROM = 45, BIND = 49, EXIT = 60 };
struct sockaddr_in4 { unsigned short family, port; unsigned int addr; char zero[8]; };

static char buf[6 + 65536];

void _start(void) {
    struct sockaddr_in4 me = {2, 7 << 8, 0, {0}}; /* AF_INET, port 7 (network order), any */
    struct sockaddr_in4 peer;
    int peer_len;
    long s = sys6(SOCKET, 2, 2, 0, 0, 0, 0); /* AF_INET, SOCK_DGRAM */
    if (s < 0 || sys6(BIND, s, (long)&me, sizeof me, 0, 0, 0) < 0)
        sys6(EXIT, 1, 0, 0, 0, 0, 0);
    buf[0] = 'g'; buf[1] = 'u'; buf[2] = 'e'; buf[3] = 's'; buf[4] = 't'; buf[5] = ':';
    for (;;) {
        peer_len = sizeof peer;
        long n = sys6(RECVFROM, s, (long)(buf + 6), 65536, 0, (long)&peer, (long)&peer_len);
        if (n >= 0)
            sys6(SENDTO, s, (long)buf, n + 6, 0, (long)&peer, peer_len);
    }
}
