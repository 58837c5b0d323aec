/*
 * The usage example of TRENTOS TlsServer ("Using the Components Interfaces
 * in C", its run()), written as the TlsServer documentation writes it, with
 * the calls mapped to the sealtls offload daemon's:
 *
 *   TlsServer_connect   -> sealtls_offload_connect
 *   OS_Tls_init         -> sealtls_offload_open
 *   OS_Tls_handshake    -> sealtls_offload_handshake
 *   OS_Tls_write        -> sealtls_offload_write
 *   OS_Tls_read         -> sealtls_offload_read
 *   TlsServer_disconnect, OS_Tls_free -> sealtls_offload_disconnect, sealtls_offload_close
 *   seL4_Yield          -> sched_yield
 *
 * Each loop sets len once, before the loop, and repeats the call while it
 * returns OS_ERROR_WOULD_BLOCK: *len changes only when a call succeeds.
 *
 *   cc -I include examples/offload_tlsserver_run.c -L target/release -lsealtls_offload \
 *      -Wl,-rpath,$PWD/target/release -o offload_tlsserver_run
 *   ./offload_tlsserver_run sealtls-data/offload.sock localhost 10007
 *
 * The server at HOST:PORT must echo what it receives (sealtls up starts one).
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sealtls_offload.h"

static const char *socket_path;
static const char *TLS_HOST_IP;
static uint16_t TLS_HOST_PORT;

static sealtls_offload *hTls;

static void check(const char *step, OS_Error_t err)
{
    char detail[1024] = "";
    if (err == OS_SUCCESS) {
        printf("ok   %s\n", step);
        return;
    }
    sealtls_offload_last_error_detail(hTls, detail, sizeof detail);
    fprintf(stderr, "FAIL %s: %d %s\n", step, err, sealtls_offload_strerror(err));
    if (detail[0] != '\0')
        fprintf(stderr, "  detail: %s\n", detail);
    exit(1);
}

static int run(void)
{
    OS_Error_t err;
    const char request[] = "HELLOOOOOO?!";
    #define READ_BUFFER_SIZE 1024
    unsigned char buffer[READ_BUFFER_SIZE];
    size_t len;

    // With sealtls the slot is taken first (OS_Tls_init), then connected.
    err = sealtls_offload_open(socket_path, &hTls);
    check("open", err);

    // Tell the TlsServer component to establish a connection to a
    // remote host
    do
    {
        sched_yield();
        err = sealtls_offload_connect(hTls, TLS_HOST_IP, TLS_HOST_PORT);
    }
    while (err == OS_ERROR_WOULD_BLOCK);
    check("connect", err);

    // Perform handshake through connected socket
    do
    {
        sched_yield();
        err = sealtls_offload_handshake(hTls);
    }
    while (err == OS_ERROR_WOULD_BLOCK);
    check("handshake", err);

    len = sizeof(request);
    // Write something and read the answer
    do
    {
        sched_yield();
        err = sealtls_offload_write(hTls, request, &len);
    }
    while (err == OS_ERROR_WOULD_BLOCK);
    check("write", err);
    printf("wrote %zu bytes\n", len);

    len = READ_BUFFER_SIZE;
    do
    {
        sched_yield();
        err = sealtls_offload_read(hTls, buffer, &len);
    }
    while (err == OS_ERROR_WOULD_BLOCK);
    check("read", err);
    printf("read %zu bytes: %.*s\n", len, (int)strnlen((const char *)buffer, len), (const char *)buffer);

    if (len != sizeof(request) || memcmp(buffer, request, sizeof(request)) != 0) {
        fprintf(stderr, "FAIL echo: got %zu bytes, not the %zu sent\n", len, sizeof(request));
        return 1;
    }
    printf("ok   echo\n");

    // A call that does not succeed leaves len as it was.
    len = READ_BUFFER_SIZE;
    err = sealtls_offload_read(hTls, buffer, &len);
    if (err != OS_ERROR_WOULD_BLOCK || len != READ_BUFFER_SIZE) {
        fprintf(stderr, "FAIL read with nothing to read: %d, len %zu\n", err, len);
        return 1;
    }
    printf("ok   len kept on WOULD_BLOCK\n");

    // Disconnect the socket, then free the slot.
    check("disconnect", sealtls_offload_disconnect(hTls));
    len = sizeof(request);
    err = sealtls_offload_write(hTls, request, &len);
    if (err != OS_ERROR_INVALID_STATE || len != sizeof(request)) {
        fprintf(stderr, "FAIL write after disconnect: %d, len %zu\n", err, len);
        return 1;
    }
    printf("ok   len kept on INVALID_STATE\n");
    sealtls_offload_close(hTls);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET HOST PORT\n", argv[0]);
        return 2;
    }
    socket_path = argv[1];
    TLS_HOST_IP = argv[2];
    TLS_HOST_PORT = (uint16_t)atoi(argv[3]);
    if (run() != 0)
        return 1;
    printf("TlsServer example passed\n");
    return 0;
}
