/* Board layer for a Linux host: lets the firmware run as a process in tests without QEMU.
 *
 *   UART   stdin / stdout (raw bytes; read after poll(), write everything)
 *   time   CLOCK_MONOTONIC since efp_board_init
 *   idle   poll() on stdin, 5 ms at most
 *   flash  a file mmap'd shared (path in EFP_FLASH_FILE), created full of 0xFF, 2 MB + 2 pages of
 *          4 KB, with NOR semantics (erase -> 0xFF, program ANDs). Without EFP_FLASH_FILE, an
 *          unlinked temporary file, kept across efp_board_reset() through an inherited descriptor.
 *   reset  re-exec of /proc/self/exe with the same arguments: the flash file survives, as on a chip.
 *   sensor the sensor link (docs/sensors.md) on the file descriptor in EFP_SENSOR_FD (a socket the
 *          launcher answers), else none.
 *   EOF on stdin ends the process (exit status 0).
 */
#define _GNU_SOURCE 1

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "board.h"
#include "emulated_flash.h"
#include "sensor_link.h"

const char efp_board_name[] = "native";

#define FLASH_PAGE 4096u
#define FLASH_SIZE (2u * 1024u * 1024u + 2u * FLASH_PAGE)
#define IDLE_MS    5

static uint8_t *flash;
static efp_emulated_flash nor = {NULL, FLASH_SIZE, FLASH_PAGE}; /* its base: flash, once mapped */
static struct timespec t_start;
static char **saved_argv;
static int sensor_fd = -1;
static int sensor_waiting; /* the firmware asked for a window and the pipe had no more bytes */

static void die(const char *what)
{
    fprintf(stderr, "board(host): %s: %s\n", what, strerror(errno));
    exit(2);
}

/* The arguments of this process, for the re-exec (main() takes none). */
static void save_argv(void)
{
    int fd = open("/proc/self/cmdline", O_RDONLY);
    if (fd < 0) {
        return;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (buf == NULL) {
            close(fd);
            return;
        }
        ssize_t k = read(fd, buf + len, cap - len);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            break;
        }
        len += (size_t)k;
        if (len == cap) {
            char *grown = realloc(buf, 2 * cap + 1);
            if (grown == NULL) {
                free(buf); /* and give up at the loop's check */
            }
            buf = grown;
            cap *= 2;
        }
    }
    close(fd);
    buf[len] = '\0';
    size_t argc = 0;
    for (size_t i = 0; i < len; i++) {
        argc += buf[i] == '\0';
    }
    saved_argv = calloc(argc + 1, sizeof(char *));
    if (saved_argv == NULL) {
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < len && n < argc; i += strlen(buf + i) + 1) {
        saved_argv[n++] = buf + i;
    }
    saved_argv[n] = NULL;
}

/* Grows the file to FLASH_SIZE with 0xFF (an erased chip). */
static void fill_erased(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        die("fstat flash file");
    }
    if ((uint64_t)st.st_size >= FLASH_SIZE) {
        return;
    }
    static uint8_t ff[FLASH_PAGE];
    memset(ff, 0xFF, sizeof ff);
    off_t off = st.st_size;
    while ((uint64_t)off < FLASH_SIZE) {
        size_t n = FLASH_SIZE - (size_t)off < sizeof ff ? FLASH_SIZE - (size_t)off : sizeof ff;
        ssize_t k = pwrite(fd, ff, n, off);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            die("fill flash file");
        }
        off += k;
    }
}

static void flash_open(void)
{
    const char *path = getenv("EFP_FLASH_FILE");
    const char *inherited = getenv("EFP_FLASH_FD");
    int fd;
    if (path != NULL && path[0] != '\0') {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            die(path);
        }
    } else if (inherited != NULL) {
        fd = atoi(inherited);
    } else {
        char tmpl[] = "/tmp/efp-flash-XXXXXX";
        fd = mkstemp(tmpl);
        if (fd < 0) {
            die("mkstemp");
        }
        unlink(tmpl);
        char num[16];
        snprintf(num, sizeof num, "%d", fd);
        setenv("EFP_FLASH_FD", num, 1); /* not CLOEXEC: the re-exec'd image finds it again */
    }
    fill_erased(fd);
    void *m = mmap(NULL, FLASH_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        die("mmap flash file");
    }
    flash = nor.base = m;
    if (path != NULL && path[0] != '\0') {
        close(fd);
    }
}

void efp_board_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    clock_gettime(CLOCK_MONOTONIC, &t_start);
    save_argv();
    flash_open();
    const char *sensor = getenv("EFP_SENSOR_FD");
    if (sensor != NULL && sensor[0] != '\0') {
        sensor_fd = atoi(sensor);
        fcntl(sensor_fd, F_SETFL, fcntl(sensor_fd, F_GETFL) | O_NONBLOCK);
    }
}

/* ---- UART = stdin/stdout ---- */

size_t efp_board_uart_read(uint8_t *buf, size_t max)
{
    if (max == 0) {
        return 0;
    }
    struct pollfd p = {.fd = 0, .events = POLLIN};
    int r = poll(&p, 1, 0);
    if (r <= 0 || (p.revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
        return 0;
    }
    ssize_t k = read(0, buf, max);
    if (k > 0) {
        return (size_t)k;
    }
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) {
        return 0;
    }
    /* EOF (or a dead stdin): the host closed the line. */
    if (flash != NULL) {
        msync(flash, FLASH_SIZE, MS_SYNC);
    }
    exit(0);
}

void efp_board_uart_write(const uint8_t *buf, size_t len)
{
    while (len > 0) {
        ssize_t k = write(1, buf, len);
        if (k > 0) {
            buf += k;
            len -= (size_t)k;
        } else if (k < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = 1, .events = POLLOUT};
            poll(&p, 1, 100);
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else {
            exit(0); /* stdout gone */
        }
    }
}

/* ---- time, idle ---- */

uint32_t efp_board_time_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    int64_t us = (int64_t)(t.tv_sec - t_start.tv_sec) * 1000000 + (t.tv_nsec - t_start.tv_nsec) / 1000;
    return (uint32_t)us;
}

void efp_board_idle(void)
{
    struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = sensor_fd, .events = POLLIN}};
    poll(p, sensor_waiting && sensor_fd >= 0 ? 2 : 1, IDLE_MS);
}

/* ---- sensor ---- */

int efp_board_sensor_read(float *window, uint32_t count)
{
    static efp_sensor_link link;
    static uint8_t buf[512];
    static size_t pos, len;
    if (sensor_fd < 0) {
        return -1;
    }
    if (efp_sensor_link_ask(&link, window, count)) {
        uint8_t ask = EFP_SENSOR_ASK;
        if (write(sensor_fd, &ask, 1) != 1) {
            link.asked = 0; /* try again next time */
        }
    }
    for (;;) {
        while (pos < len) {
            if (efp_sensor_link_feed(&link, buf[pos++], window, count)) {
                sensor_waiting = 0;
                return 1;
            }
        }
        ssize_t k = read(sensor_fd, buf, sizeof buf);
        if (k <= 0) {
            if (k == 0) { /* the launcher went away: no sensor any more */
                close(sensor_fd);
                sensor_fd = -1;
            }
            sensor_waiting = k < 0;
            return 0;
        }
        pos = 0;
        len = (size_t)k;
    }
}

/* ---- flash ---- */

uint32_t efp_board_flash_size(void) { return FLASH_SIZE; }
uint32_t efp_board_flash_page(void) { return FLASH_PAGE; }
const uint8_t *efp_board_flash_map(void) { return flash; }

int efp_board_flash_erase(uint32_t offset, uint32_t len) { return efp_emulated_flash_erase(&nor, offset, len); }

int efp_board_flash_program(uint32_t offset, const uint8_t *data, uint32_t len)
{
    return efp_emulated_flash_program(&nor, offset, data, len);
}

/* ---- reset ---- */

void efp_board_reset(void)
{
    fflush(NULL);
    if (flash != NULL) {
        msync(flash, FLASH_SIZE, MS_SYNC);
        munmap(flash, FLASH_SIZE);
        flash = nor.base = NULL;
    }
    if (saved_argv != NULL && saved_argv[0] != NULL) {
        execv("/proc/self/exe", saved_argv);
    } else {
        char *argv0[] = {(char *)"firmware", NULL};
        execv("/proc/self/exe", argv0);
    }
    die("execv /proc/self/exe");
}
