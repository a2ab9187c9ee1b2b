"""Protobuf wire encoding by hand, for the benchmark scripts' pre-encoded requests."""
import struct


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, payload):
    """A length-delimited field (string, bytes, message)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field, n):
    """A varint field."""
    return varint(field << 3) + varint(n)


def f64(field, n):
    """A fixed 64-bit field."""
    return varint(field << 3 | 1) + struct.pack('<Q', n)


def grpc_frame(msg):
    """One uncompressed gRPC message: a zero byte, the length, the message."""
    return b'\0' + struct.pack('>I', len(msg)) + msg
