/*
 * The TlsServer reference test, through the sealtls offload daemon:
 *
 *   cc -I include examples/offload_reference.c -L target/release -lsealtls_offload \
 *      -Wl,-rpath,$PWD/target/release -o offload_reference
 *   ./offload_reference sealtls-data/offload.sock localhost 10007
 *
 * The server at HOST:PORT must echo what it receives (sealtls up starts one).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sealtls_offload.h"

#define POLL_LIMIT 10000 /* 1 ms apart: 10 s */

static sealtls_offload *h;

static void pause_1ms(void)
{
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
}

static void fail(const char *step, int code)
{
    char detail[1024] = "";
    sealtls_offload_last_error_detail(h, detail, sizeof detail);
    fprintf(stderr, "FAIL %s: %d %s\n", step, code, sealtls_offload_strerror(code));
    if (detail[0] != '\0')
        fprintf(stderr, "  detail: %s\n", detail);
    exit(1);
}

static void expect(const char *step, int got, int want)
{
    if (got != want)
        fail(step, got);
    printf("ok   %-34s %s\n", step, sealtls_offload_strerror(got));
}

/* Calls op until it stops answering WOULD_BLOCK. */
static int poll_call(int (*op)(sealtls_offload *))
{
    int rc = OS_ERROR_WOULD_BLOCK;
    for (int i = 0; i < POLL_LIMIT && rc == OS_ERROR_WOULD_BLOCK; i++) {
        rc = op(h);
        if (rc == OS_ERROR_WOULD_BLOCK)
            pause_1ms();
    }
    return rc;
}

static const char *target_host;
static uint16_t target_port;

static int connect_target(sealtls_offload *handle)
{
    return sealtls_offload_connect(handle, target_host, target_port);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET HOST PORT\n", argv[0]);
        return 2;
    }
    target_host = argv[2];
    target_port = (uint16_t)atoi(argv[3]);

    int rc = sealtls_offload_open(argv[1], &h);
    if (rc != OS_SUCCESS)
        fail("open", rc);
    printf("ok   %-34s %s\n", "open", sealtls_offload_strerror(rc));

    expect("connect with an empty host", sealtls_offload_connect(h, "", target_port), OS_ERROR_INVALID_PARAMETER);
    expect("connect with port 0", sealtls_offload_connect(h, target_host, 0), OS_ERROR_INVALID_PARAMETER);
    expect("connect (polled)", poll_call(connect_target), OS_SUCCESS);
    expect("handshake (polled)", poll_call(sealtls_offload_handshake), OS_SUCCESS);

    static const char message[] = "HELLOOOOOO?!"; /* 13 bytes with its NUL */
    size_t sent = 0;
    for (int i = 0; i < POLL_LIMIT && sent < sizeof message; i++) {
        size_t len = sizeof message - sent;
        rc = sealtls_offload_write(h, message + sent, &len);
        if (rc == OS_SUCCESS)
            sent += len;
        else if (rc == OS_ERROR_WOULD_BLOCK)
            pause_1ms();
        else
            fail("write", rc);
    }
    expect("write 13 bytes", sent == sizeof message ? OS_SUCCESS : OS_ERROR_GENERIC, OS_SUCCESS);

    char echo[sizeof message];
    size_t got = 0;
    for (int i = 0; i < POLL_LIMIT && got < sizeof echo; i++) {
        size_t len = sizeof echo - got;
        rc = sealtls_offload_read(h, echo + got, &len);
        if (rc == OS_SUCCESS)
            got += len;
        else if (rc == OS_ERROR_WOULD_BLOCK)
            pause_1ms();
        else
            fail("read", rc);
    }
    if (got != sizeof message || memcmp(echo, message, sizeof message) != 0) {
        fprintf(stderr, "FAIL read: got %zu bytes, not the 13 sent\n", got);
        return 1;
    }
    printf("ok   %-34s %s\n", "read the same 13 bytes back", sealtls_offload_strerror(OS_SUCCESS));

    expect("disconnect", sealtls_offload_disconnect(h), OS_SUCCESS);
    expect("disconnect again", sealtls_offload_disconnect(h), OS_ERROR_INVALID_STATE);
    sealtls_offload_close(h);
    printf("reference test passed\n");
    return 0;
}
