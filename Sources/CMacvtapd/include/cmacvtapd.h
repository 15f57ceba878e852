// The one C shim of macvtapd: kernel headers and the calls Swift cannot make directly
// (variadic ioctl, function-like macros, cmsg arithmetic). Keep it small: logic lives in Swift.
#ifndef CMACVTAPD_H
#define CMACVTAPD_H

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <net/if.h>
#include <sched.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

// ioctl request numbers built with _IOW/_IOR, which Swift does not import.
static const unsigned long CMACVTAPD_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long CMACVTAPD_TUNGETVNETHDRSZ = TUNGETVNETHDRSZ;
static const unsigned long CMACVTAPD_TUNSETIFF = TUNSETIFF;
static const unsigned long CMACVTAPD_TUNGETIFF = TUNGETIFF;
static const unsigned long CMACVTAPD_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const unsigned long CMACVTAPD_TUNGETFEATURES = TUNGETFEATURES;

/// ioctl with an int argument passed by pointer (TUNSETVNETHDRSZ and friends).
int cmacvtapd_ioctl_intptr(int fd, unsigned long request, int *value);
/// ioctl with an unsigned integer argument passed by value (TUNSETOFFLOAD).
int cmacvtapd_ioctl_ulong(int fd, unsigned long request, unsigned long value);
/// ioctl with a struct ifreq (TUNSETIFF / TUNGETIFF).
int cmacvtapd_ioctl_ifreq(int fd, unsigned long request, struct ifreq *ifr);

/// makedev/major/minor are macros in glibc.
dev_t cmacvtapd_makedev(unsigned int major, unsigned int minor);
unsigned int cmacvtapd_major(dev_t dev);
unsigned int cmacvtapd_minor(dev_t dev);

/// Sends `len` bytes of `data` on a unix stream socket with `fd` attached as SCM_RIGHTS.
/// Returns the byte count sent or -1 with errno set.
ssize_t cmacvtapd_send_with_fd(int sock, const void *data, size_t len, int fd);

/// Receives up to `len` bytes; if the message carries SCM_RIGHTS, the first fd is stored in
/// `*received_fd` (else -1) and any further fds are closed. Returns bytes read or -1/errno.
ssize_t cmacvtapd_recv_with_fd(int sock, void *data, size_t len, int *received_fd);

/// Switches the calling thread's network namespace to the one at `ns_fd` (setns CLONE_NEWNET).
int cmacvtapd_setns_net(int ns_fd);

// --- QMP / QEMU fixtures ---
#include <spawn.h>

/// posix_spawn_file_actions_addclosefrom_np (glibc >= 2.34), hidden from Swift behind _GNU_SOURCE:
/// a spawned QEMU must not inherit a parallel test's descriptors.
int cmacvtapd_spawn_closefrom(posix_spawn_file_actions_t *actions, int lowfd);

// --- netlink client (MacvtapdNetlink): the link monitor's wakeup descriptor.
#include <sys/eventfd.h>

// --- udev (test fixtures): a thread-private mount namespace for a private /run/udev and /sys.

/// unshare(CLONE_NEWNS) for the calling thread (its filesystem attributes are unshared with it).
int cmacvtapd_unshare_mount_namespace(void);

// --- control socket (MacvtapdControl): who is on the other end of a unix socket.

/// SO_PEERCRED (struct ucred needs _GNU_SOURCE): the peer's pid, uid and gid. Returns 0 or -1/errno.
int cmacvtapd_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

/// accept4 (a GNU extension) with SOCK_NONBLOCK | SOCK_CLOEXEC.
int cmacvtapd_accept_nonblocking(int sock);

#endif
