/*
 * sealtls_offload.h: C interface to the sealtls TLS offload daemon.
 *
 * The daemon (`sealtls offload --socket PATH --trust CA.pem`) opens, verifies
 * and carries outbound TLS connections for local programs. These calls are
 * those of TRENTOS TlsServer and return its OS_Error_t values. Each call
 * sends one request to the daemon, which answers at once: work still under
 * way returns OS_ERROR_WOULD_BLOCK and the call is repeated later.
 *
 * Link with -lsealtls_offload (target/release/libsealtls_offload.so).
 * A handle must not be used by two threads at the same time.
 */
#ifndef SEALTLS_OFFLOAD_H
#define SEALTLS_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef SEALTLS_NO_OS_ERROR_T
/* The OS_Error_t values of TRENTOS, as returned by every call. */
typedef enum {
    OS_SUCCESS                     = 0,
    OS_ERROR_GENERIC               = -1,
    OS_ERROR_NOT_SUPPORTED         = -3,
    OS_ERROR_INVALID_STATE         = -4,
    OS_ERROR_INVALID_PARAMETER     = -5,
    OS_ERROR_NOT_FOUND             = -8,
    OS_ERROR_OPERATION_DENIED      = -10,
    OS_ERROR_ABORTED               = -11,
    OS_ERROR_INSUFFICIENT_SPACE    = -13,
    OS_ERROR_CONNECTION_CLOSED     = -15,
    OS_ERROR_OUT_OF_BOUNDS         = -16,
    OS_ERROR_WOULD_BLOCK           = -17,
    OS_ERROR_TRY_AGAIN             = -18,
    OS_ERROR_NOT_INITIALIZED       = -19,
    OS_ERROR_NETWORK_CONN_SHUTDOWN = -1306
} OS_Error_t;
#endif

/* One slot at the daemon (its badge), holding one connection at a time. */
typedef struct sealtls_offload sealtls_offload;

/* init(): connects to the daemon and takes a slot. OUT_OF_BOUNDS when all
 * slots are taken, OPERATION_DENIED when this user is not allowed,
 * NOT_FOUND when no daemon listens at socket_path. *out is NULL on failure;
 * sealtls_offload_last_error_detail(NULL, ...) then says why. */
int sealtls_offload_open(const char *socket_path, sealtls_offload **out);

/* connect(host, port): host is a DNS name or an IP address, checked against
 * the server's certificate. INVALID_PARAMETER for "" or port 0; WOULD_BLOCK
 * until the TCP connection is up, then SUCCESS once; NETWORK_CONN_SHUTDOWN
 * if it failed; INVALID_STATE when already connected. */
int sealtls_offload_connect(sealtls_offload *h, const char *host, uint16_t port);

/* handshake(): WOULD_BLOCK until done, then SUCCESS; ABORTED if it failed
 * (the detail says why; the slot is then disconnected); OPERATION_DENIED
 * for a second handshake; INVALID_STATE before connect. */
int sealtls_offload_handshake(sealtls_offload *h);

/* write: *len in: bytes offered (1 to the daemon's buffer size, 16 KiB by
 * default); out: bytes taken. WOULD_BLOCK when none could be taken yet.
 * *len is changed only when the call returns OS_SUCCESS: on WOULD_BLOCK and
 * every other result it keeps what the caller passed, so
 *     len = sizeof(request);
 *     do err = sealtls_offload_write(h, request, &len);
 *     while (err == OS_ERROR_WOULD_BLOCK);
 * works as in TlsServer's example. */
int sealtls_offload_write(sealtls_offload *h, const void *buf, size_t *len);

/* read: *len in: room in buf (1 to the buffer size); out: bytes read.
 * WOULD_BLOCK when nothing has arrived, CONNECTION_CLOSED after the
 * server's close_notify, NETWORK_CONN_SHUTDOWN if the connection broke.
 * As with write, *len (and buf) change only on OS_SUCCESS, so it can be
 * set once before a loop that repeats the call on WOULD_BLOCK. */
int sealtls_offload_read(sealtls_offload *h, void *buf, size_t *len);

/* reset(): ends the TLS session; the next handshake starts a new one. */
int sealtls_offload_reset(sealtls_offload *h);

/* disconnect(): close_notify if a session is up, then close. INVALID_STATE
 * when not connected. */
int sealtls_offload_disconnect(sealtls_offload *h);

/* Frees the slot (its connection is closed with close_notify) and h. */
void sealtls_offload_close(sealtls_offload *h);

/* "OS_ERROR_NAME: meaning" for a code; a static string. */
const char *sealtls_offload_strerror(int code);

/* Why the last call on h failed (h NULL: the last sealtls_offload_open on
 * this thread), NUL-terminated in buf of len bytes, e.g. why a certificate
 * was refused. INSUFFICIENT_SPACE when the text was cut to fit. */
int sealtls_offload_last_error_detail(sealtls_offload *h, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* SEALTLS_OFFLOAD_H */
