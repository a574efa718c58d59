#!/usr/bin/env python3
"""Records the XFRM_MSG_NEWSA messages iproute2 sends for `ip xfrm state
add`, as the kernel's netlink would carry them, into recorded/NAME.nlmsg.

Run as root (it makes and removes a network namespace), with strace and
iproute2 installed. The kernel need not have ESP: the request is recorded
whether or not the kernel accepts it. Each message is rebuilt from
strace's decoded netlink header and the raw body it prints."""
import os, re, subprocess, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
KEY20 = "0x0102030405060708090a0b0c0d0e0f1011121314"
KEY36 = "0x" + "".join("%02x" % i for i in range(1, 37))
KEY16 = "0x" + "".join("%02x" % (0x20 + i) for i in range(16))
KEY32 = "0x" + "".join("%02x" % (0x40 + i) for i in range(32))
KEY64 = "0x" + "".join("%02x" % (0x80 + i) for i in range(64))
CASES = {
    "gcm16-transport-esn": f"src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x1234 mode transport reqid 7 replay-window 32 flag esn aead rfc4106(gcm(aes)) {KEY20} 128",
    "chacha-tunnel6-encap": f"src 2001:db8::1 dst 2001:db8::2 proto esp spi 0xc0de0002 mode tunnel encap espinudp 4500 4501 0.0.0.0 aead rfc7539esp(chacha20,poly1305) {KEY36} 128",
    "cbc-sha256-lifetimes": f"src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x3003 mode tunnel enc cbc(aes) {KEY16} auth-trunc hmac(sha256) {KEY32} 128 limit time-soft 3000 limit time-hard 3600 limit byte-soft 1000000 limit byte-hard 2000000",
    "cbc-sha1-auth": f"src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x4004 mode transport enc cbc(aes) {KEY16} auth hmac(sha1) 0x{'11'*20}",
    "ah-sha256": f"src 192.0.2.1 dst 192.0.2.2 proto ah spi 0x5005 mode transport auth-trunc hmac(sha256) {KEY32} 128",
    "ctr-sha512": f"src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x6006 mode transport enc rfc3686(ctr(aes)) {KEY20} auth-trunc hmac(sha512) {KEY64} 256",
    "gcm-icv64": f"src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x7007 mode transport aead rfc4106(gcm(aes)) {KEY20} 64",
    "gcm-beet": f"src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x8008 mode beet aead rfc4106(gcm(aes)) {KEY20} 128",
}
HDR = re.compile(r"nlmsg_len=(\d+), nlmsg_type=(0x[0-9a-f]+)[^,]*, nlmsg_flags=([A-Z_|]+), nlmsg_seq=(\d+), nlmsg_pid=(\d+)\}, \"((?:\\x[0-9a-f]{2})*)\"")
FLAGS = {"NLM_F_REQUEST": 1, "NLM_F_ACK": 4, "NLM_F_CREATE": 0x400, "NLM_F_EXCL": 0x200}

def record(name, args):
    out = subprocess.run(["strace", "-e", "trace=sendmsg", "-xx", "-s", "4096", "ip", "-n", "xfrmrec", "xfrm", "state", "add"] + args.split(),
                         capture_output=True, text=True).stderr
    m = HDR.search(out)
    if not m:
        sys.exit(f"{name}: no netlink message in strace output:\n{out}")
    body = bytes.fromhex(m.group(6).replace("\\x", ""))
    flags = sum(FLAGS[f] for f in m.group(3).split("|"))
    hdr = struct.pack("<IHHII", int(m.group(1)), int(m.group(2), 16), flags, int(m.group(4)), int(m.group(5)))
    msg = hdr + body
    assert len(msg) == int(m.group(1)), (name, len(msg))
    with open(os.path.join(HERE, "recorded", name + ".nlmsg"), "wb") as f:
        f.write(msg)

subprocess.run(["ip", "netns", "add", "xfrmrec"], check=True)
try:
    for name, args in CASES.items():
        record(name, args)
finally:
    subprocess.run(["ip", "netns", "del", "xfrmrec"])
