#define _GNU_SOURCE
#include "cmacvtapd.h"

#include <string.h>

int cmacvtapd_ioctl_intptr(int fd, unsigned long request, int *value) {
    return ioctl(fd, request, value);
}

int cmacvtapd_ioctl_ulong(int fd, unsigned long request, unsigned long value) {
    return ioctl(fd, request, value);
}

int cmacvtapd_ioctl_ifreq(int fd, unsigned long request, struct ifreq *ifr) {
    return ioctl(fd, request, ifr);
}

dev_t cmacvtapd_makedev(unsigned int major, unsigned int minor) { return makedev(major, minor); }
unsigned int cmacvtapd_major(dev_t dev) { return major(dev); }
unsigned int cmacvtapd_minor(dev_t dev) { return minor(dev); }

ssize_t cmacvtapd_send_with_fd(int sock, const void *data, size_t len, int fd) {
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    ssize_t sent;
    do {
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent;
}

ssize_t cmacvtapd_recv_with_fd(int sock, void *data, size_t len, int *received_fd) {
    *received_fd = -1;
    struct iovec iov = {.iov_base = data, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * 8)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    ssize_t got;
    do {
        got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got < 0) return got;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int fds[8];
        memcpy(fds, CMSG_DATA(cmsg), count * sizeof(int));
        for (size_t i = 0; i < count; i++) {
            if (*received_fd < 0) {
                *received_fd = fds[i];
            } else {
                close(fds[i]);
            }
        }
    }
    return got;
}

int cmacvtapd_setns_net(int ns_fd) { return setns(ns_fd, CLONE_NEWNET); }

// --- QMP / QEMU fixtures ---
int cmacvtapd_spawn_closefrom(posix_spawn_file_actions_t *actions, int lowfd) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowfd);
}

// --- udev (test fixtures)
int cmacvtapd_unshare_mount_namespace(void) { return unshare(CLONE_NEWNS); }

int cmacvtapd_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

int cmacvtapd_accept_nonblocking(int sock) { return accept4(sock, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }
