/* The benchmarks' floor: the least an event-stream server can do on this machine.
 *
 * One thread, epoll. `GET /sub/<channel>` gets a text/event-stream head and then, for every
 * event of that channel, `data: <body>\n\n` in ONE send(). `POST /pub/<channel>` (a body with
 * Content-Length, pipelined requests welcome) sends the event to each of the channel's
 * subscribers and answers 200. Nothing else: no history, no buffering (a subscriber whose
 * socket cannot take an event whole is closed), no validation beyond finding the request's
 * parts. It shows how far a real server is from the cost of the system calls alone.
 *
 * Built by run.py with `cc -O2 -o floor floor.c`; run as `floor PORT` (127.0.0.1 only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_INPUT (1 << 20)
#define MAX_NAME 128
#define TABLE_SIZE (1 << 17) /* channels: open addressing, at most half full */

static const char SUB_HEAD[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";
static const char PUB_OK[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
static const char NOT_FOUND[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

struct channel {
    char *name;
    int *fds;
    int count, cap;
};

struct conn {
    char *in;
    size_t len, cap;
    struct channel *subscribed; /* NULL unless a subscriber */
    int slot;                   /* its index in subscribed->fds */
};

static struct channel table[TABLE_SIZE];
static int channels;
static struct conn **conns;
static int max_fds;
static int epfd;
static char *frame;
static size_t frame_cap;

static unsigned long hash(const char *s, size_t n) {
    unsigned long h = 1469598103934665603UL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211UL;
    return h;
}

static struct channel *lookup(const char *name, size_t n, int create) {
    unsigned long i = hash(name, n) & (TABLE_SIZE - 1);
    while (table[i].name) {
        if (strlen(table[i].name) == n && memcmp(table[i].name, name, n) == 0) return &table[i];
        i = (i + 1) & (TABLE_SIZE - 1);
    }
    if (!create || channels >= TABLE_SIZE / 2) return NULL;
    table[i].name = strndup(name, n);
    channels++;
    return &table[i];
}

static void unsubscribe(int fd) {
    struct conn *c = conns[fd];
    struct channel *ch = c->subscribed;
    if (!ch) return;
    int last = ch->fds[--ch->count];
    ch->fds[c->slot] = last;
    conns[last]->slot = c->slot;
    c->subscribed = NULL;
}

static void drop(int fd) {
    struct conn *c = conns[fd];
    if (!c) return;
    unsubscribe(fd);
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(c->in);
    free(c);
    conns[fd] = NULL;
}

static int send_all(int fd, const char *data, size_t n) {
    ssize_t sent = send(fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    return sent == (ssize_t)n ? 0 : -1;
}

static void publish(struct channel *ch, const char *body, size_t n) {
    if (!ch) return;
    if (n + 8 > frame_cap) {
        frame_cap = n + 8;
        frame = realloc(frame, frame_cap);
    }
    memcpy(frame, "data: ", 6);
    memcpy(frame + 6, body, n);
    memcpy(frame + 6 + n, "\n\n", 2);
    for (int i = 0; i < ch->count;) {
        int fd = ch->fds[i];
        if (send_all(fd, frame, n + 8) == 0) {
            i++;
        } else {
            drop(fd); /* the last fd moved into slot i */
        }
    }
}

/* Handle every complete request in the connection's input; -1 to close it. */
static int handle(int fd) {
    struct conn *c = conns[fd];
    size_t pos = 0;
    char replies[1 << 14];
    size_t out = 0;
    while (pos < c->len) {
        char *start = c->in + pos;
        char *end = memmem(start, c->len - pos, "\r\n\r\n", 4);
        if (!end) break;
        size_t head = (size_t)(end - start) + 4;
        size_t length = 0;
        for (char *line = memchr(start, '\n', head); line && line < end; line = memchr(line + 1, '\n', (size_t)(end - line))) {
            if (strncasecmp(line + 1, "content-length:", 15) == 0) length = strtoul(line + 16, NULL, 10);
        }
        if (pos + head + length > c->len) break;
        char *path = memchr(start, ' ', head);
        if (!path) return -1;
        path++;
        char *path_end = memchr(path, ' ', (size_t)(end - path));
        if (!path_end) return -1;
        size_t path_len = (size_t)(path_end - path);
        if (strncmp(start, "GET /sub/", 9) == 0 && path_len > 5 && path_len - 5 <= MAX_NAME) {
            struct channel *ch = lookup(path + 5, path_len - 5, 1);
            if (!ch || c->subscribed) return -1;
            if (ch->count == ch->cap) {
                ch->cap = ch->cap ? ch->cap * 2 : 4;
                ch->fds = realloc(ch->fds, sizeof(int) * (size_t)ch->cap);
            }
            c->slot = ch->count;
            ch->fds[ch->count++] = fd;
            c->subscribed = ch;
            if (send_all(fd, SUB_HEAD, sizeof(SUB_HEAD) - 1) < 0) return -1;
        } else if (strncmp(start, "POST /pub/", 10) == 0 && path_len > 5 && path_len - 5 <= MAX_NAME) {
            publish(lookup(path + 5, path_len - 5, 0), start + head, length);
            if (out + sizeof(PUB_OK) > sizeof(replies)) {
                if (send_all(fd, replies, out) < 0) return -1;
                out = 0;
            }
            memcpy(replies + out, PUB_OK, sizeof(PUB_OK) - 1);
            out += sizeof(PUB_OK) - 1;
        } else {
            if (send_all(fd, NOT_FOUND, sizeof(NOT_FOUND) - 1) < 0) return -1;
        }
        pos += head + length;
    }
    if (out && send_all(fd, replies, out) < 0) return -1;
    memmove(c->in, c->in + pos, c->len - pos);
    c->len -= pos;
    return 0;
}

static void readable(int fd) {
    struct conn *c = conns[fd];
    for (;;) {
        if (c->cap - c->len < 65536) {
            if (c->cap >= MAX_INPUT) { drop(fd); return; }
            c->cap = c->cap ? c->cap * 2 : 65536;
            c->in = realloc(c->in, c->cap);
        }
        ssize_t n = recv(fd, c->in + c->len, c->cap - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) { drop(fd); return; }
        break;
    }
    if (handle(fd) < 0) drop(fd);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: floor PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    max_fds = (int)limit.rlim_cur;
    conns = calloc((size_t)max_fds, sizeof(*conns));
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(listener, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(listener, 4096) < 0) {
        perror("floor: listen");
        return 1;
    }
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[512];
    for (;;) {
        int n = epoll_wait(epfd, events, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int client;
                while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (client >= max_fds) { close(client); continue; }
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conns[client] = calloc(1, sizeof(struct conn));
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = client};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, client, &cev);
                }
            } else if (conns[fd]) {
                readable(fd);
            }
        }
    }
}
