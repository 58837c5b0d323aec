"""A PKCS#11 consumer that forks without calling C_Initialize again.

Loads the module (argv[1]), finds the private key labelled argv[2], signs the
SHA-256 of "fork message N" for N = 1, forks, signs N = 2 in the child with
the parent's session and key handles, then N = 3 in the parent. Writes each
raw r||s signature to argv[3].N; exits non-zero on any failure, naming it.
"""
import ctypes
import hashlib
import os
import sys

CK_ULONG = ctypes.c_ulong
CKR_OK = 0
CKF_SERIAL_SESSION = 0x4
CKA_CLASS, CKA_LABEL = 0x0, 0x3
CKO_PRIVATE_KEY = 3
CKM_ECDSA = 0x1041

# The PKCS#11 2.40 function list: a version, then 68 pointers in the spec's order.
NAMES = ("Initialize Finalize GetInfo GetFunctionList GetSlotList GetSlotInfo GetTokenInfo GetMechanismList "
         "GetMechanismInfo InitToken InitPIN SetPIN OpenSession CloseSession CloseAllSessions GetSessionInfo "
         "GetOperationState SetOperationState Login Logout CreateObject CopyObject DestroyObject GetObjectSize "
         "GetAttributeValue SetAttributeValue FindObjectsInit FindObjects FindObjectsFinal EncryptInit Encrypt "
         "EncryptUpdate EncryptFinal DecryptInit Decrypt DecryptUpdate DecryptFinal DigestInit Digest DigestUpdate "
         "DigestKey DigestFinal SignInit Sign").split()


class Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class FunctionList(ctypes.Structure):
    _fields_ = [("version", Version)] + [("C_" + n, ctypes.c_void_p) for n in NAMES]


class Attribute(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("value", ctypes.c_void_p), ("len", CK_ULONG)]


class Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("parameter", ctypes.c_void_p), ("len", CK_ULONG)]


lib = ctypes.CDLL(sys.argv[1])
plist = ctypes.POINTER(FunctionList)()
assert lib.C_GetFunctionList(ctypes.byref(plist)) == CKR_OK
f = plist.contents


def call(name, *args):
    kinds = [CK_ULONG if isinstance(a, CK_ULONG) else ctypes.c_void_p for a in args]
    fn = ctypes.CFUNCTYPE(CK_ULONG, *kinds)(getattr(f, "C_" + name))
    rv = fn(*args)
    if rv != CKR_OK:
        print(f"{os.getpid()}: C_{name} returned {rv:#x}", flush=True)
        sys.exit(1)


call("Initialize", ctypes.c_void_p(None))
session = CK_ULONG()
call("OpenSession", CK_ULONG(1), CK_ULONG(CKF_SERIAL_SESSION), ctypes.c_void_p(None), ctypes.c_void_p(None), ctypes.byref(session))
klass = CK_ULONG(CKO_PRIVATE_KEY)
label = sys.argv[2].encode()
template = (Attribute * 2)(Attribute(CKA_CLASS, ctypes.cast(ctypes.byref(klass), ctypes.c_void_p), ctypes.sizeof(klass)),
                           Attribute(CKA_LABEL, ctypes.cast(ctypes.c_char_p(label), ctypes.c_void_p), len(label)))
call("FindObjectsInit", session, template, CK_ULONG(2))
key, found = CK_ULONG(), CK_ULONG()
call("FindObjects", session, ctypes.byref(key), CK_ULONG(1), ctypes.byref(found))
call("FindObjectsFinal", session)
assert found.value == 1, "the key is listed"


def sign(n):
    mechanism = Mechanism(CKM_ECDSA, None, 0)
    call("SignInit", session, ctypes.byref(mechanism), key)
    digest = (ctypes.c_ubyte * 32)(*hashlib.sha256(f"fork message {n}".encode()).digest())
    signature = (ctypes.c_ubyte * 64)()
    length = CK_ULONG(64)
    call("Sign", session, digest, CK_ULONG(32), signature, ctypes.byref(length))
    with open(f"{sys.argv[3]}.{n}", "wb") as out:
        out.write(bytes(signature[: length.value]))
    print(f"{os.getpid()}: signature {n} made", flush=True)


sign(1)
child = os.fork()
if child == 0:
    sign(2)
    sys.stdout.flush()
    os._exit(0)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child signed"
sign(3)
call("Finalize", ctypes.c_void_p(None))
print("done", flush=True)
